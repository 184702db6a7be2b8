//! `spike convert` writers of one output: two at once give one layout and one refusal naming the output; the
//! partial directory of a convert killed by SIGKILL, SIGTERM or SIGINT is removed by the next run, which says so.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spike_flash::layout::{Layout, LayoutKind};

mod common;

use common::{ok, spike};

/// Seed of the checkpoints these tests convert.
const SEED_CK: u32 = 0x51;

fn convert(ck: &Path, out: &Path, kind: &str) -> Command {
    let mut c = spike();
    c.arg("convert").arg("-m").arg(ck).arg("-o").arg(out).args(["--layout", kind]);
    c
}

#[test]
fn two_converts_of_one_output_give_one_layout_and_one_refusal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ck = common::synth(tmp.path(), "llama", SEED_CK, 256);
    let mut busy = 0;
    for round in 0..5 {
        let out = tmp.path().join(format!("same-{round}.spike"));
        let children: Vec<_> = ["split", "bundled"]
            .into_iter()
            .map(|kind| {
                let child = convert(&ck, &out, kind)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn convert");
                (kind, child)
            })
            .collect();
        let outs: Vec<_> =
            children.into_iter().map(|(k, c)| (k, c.wait_with_output().expect("wait for convert"))).collect();
        let winners: Vec<&str> = outs.iter().filter(|(_, o)| o.status.success()).map(|(k, _)| *k).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outs:?}");
        let (_, lost) = outs.iter().find(|(_, o)| !o.status.success()).expect("one refused");
        let err = String::from_utf8_lossy(&lost.stderr);
        assert!(err.contains(&out.display().to_string()), "round {round}: the refusal names the output: {err}");
        if err.contains("another process is writing this output") {
            busy += 1;
        } else {
            assert!(err.contains("already exists; pass --force"), "round {round}: {err}");
        }
        let lay = Layout::open(&out).expect("the winner's layout opens");
        let want = if winners[0] == "split" { LayoutKind::Split } else { LayoutKind::Bundled };
        assert_eq!(lay.manifest().kind, want, "round {round}");
        lay.verify().expect("verify");
    }
    eprintln!("{busy} of 5 rounds refused as busy (the others after the winner had finished)");
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n.ends_with(".lock"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn a_killed_converts_partial_directory_is_removed_by_the_next_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Large enough (about 25 MB of FFN) that the conversion is still writing when it is killed.
    let ck = tmp.path().join("ck");
    let out = spike()
        .args(["synth", "--arch", "llama", "--layers", "8", "--d-model", "256", "--ffn", "1024", "--heads", "4"])
        .args(["--vocab", "320", "--dtype", "f32", "--seed", &SEED_CK.to_string(), "-o"])
        .arg(&ck)
        .output()
        .expect("run spike synth");
    ok(out, "synth");
    // SIGKILL, and the signals of `kill` and of a terminal's Ctrl-C, which end a conversion as abruptly.
    for signal in ["KILL", "TERM", "INT"] {
        let lay = tmp.path().join(format!("m-{signal}.spike"));
        let mut child =
            convert(&ck, &lay, "bundled").stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
        let partial = tmp.path().join(format!("m-{signal}.spike.partial-{}", child.id()));
        let start = Instant::now();
        while !partial.exists() {
            assert!(start.elapsed() < Duration::from_secs(60), "SIG{signal}: no partial directory appeared");
            assert!(child.try_wait().expect("try_wait").is_none(), "convert finished before SIG{signal}");
            std::thread::sleep(Duration::from_millis(1));
        }
        let sent = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
        assert!(sent.expect("run kill").success(), "kill -{signal}");
        let status = child.wait().expect("reap convert");
        assert!(!status.success(), "SIG{signal}: {status:?}");
        assert!(partial.exists() && !lay.exists(), "SIG{signal}");

        let stdout = ok(convert(&ck, &lay, "bundled").output().expect("run convert"), "convert after the kill");
        let line = format!("removed {}", partial.display());
        assert!(stdout.contains(&line) && stdout.contains("no longer running"), "SIG{signal}: {stdout}");
        assert!(!partial.exists());
        Layout::open(&lay).expect("open").verify().expect("verify");
    }
}
