//! `spike convert` writers of one output: two at once give one layout and one refusal naming the output. A
//! convert or synth interrupted by SIGTERM or SIGINT removes its partial output, says so and exits with
//! 128 + the signal; the partial directory of a convert killed by SIGKILL is removed by the next run, which says so.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spike_flash::layout::{Layout, LayoutKind};

mod common;

use common::{ok, spike, synth_cmd, synth_into, Shape};

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

/// A Llama checkpoint of about 40 MB (f32, 8 layers, d_model 256, FFN 1024): large enough that a conversion of it
/// is still writing when it is signalled.
fn large_checkpoint(dir: &Path) -> PathBuf {
    let shape = Shape { arch: "llama", layers: 8, d_model: 256, ffn: 1024, heads: 4 };
    synth_into(&shape, SEED_CK, &dir.join("ck"))
}

/// Waits until `appeared` holds (polling every millisecond), failing if `child` ends first or after a minute.
fn wait_for(child: &mut Child, what: &str, appeared: impl Fn() -> bool) {
    let start = Instant::now();
    while !appeared() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what}: never appeared");
        assert!(child.try_wait().expect("try_wait").is_none(), "the command finished before {what} appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `SIG{signal}` to `child` with kill(1).
fn send(child: &Child, signal: &str) {
    let sent = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
    assert!(sent.expect("run kill").success(), "kill -{signal}");
}

/// The names in `dir` that are temporary: partial directories, temporary files, lock files.
fn debris(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial") || n.ends_with(".tmp") || n.ends_with(".lock"))
        .collect()
}

/// `cmd` with SIGINT, SIGTERM and SIGHUP at their default actions in the child, as a terminal's foreground job
/// has them. A shell's background job inherits SIGINT ignored, and spike keeps an inherited ignore (as `nohup`
/// asks), so without this the SIGINT cases would depend on how the tests were started.
fn default_signals(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, and calls only signal(2), which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(s, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    cmd
}

/// The first entry of `dir` whose name matches `name`, if any.
fn entry(dir: &Path, name: impl Fn(&str) -> bool) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&name))
}

/// Waits for `partial` (`what`) to be named by `find`, sends `SIG{signal}`, and checks what every interrupted
/// writer must do: exit with `code` (128 + the signal), say in one line that it removed that partial output,
/// print no error of its own, and leave the partial output gone.
fn interrupt(mut child: Child, what: &str, find: impl Fn() -> Option<PathBuf>, signal: &str, code: i32) {
    wait_for(&mut child, what, || find().is_some());
    let partial = find().expect("it appeared");
    send(&child, signal);
    let out = child.wait_with_output().expect("reap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.signal(), out.status.code()), (None, Some(code)), "SIG{signal}: {stderr}");
    let line = format!("interrupted by SIG{signal}: removed the partial output {} (", partial.display());
    assert!(stderr.contains(&line), "SIG{signal}: {line} not in: {stderr}");
    assert!(!stderr.contains("error:"), "SIG{signal}: the interruption is the only word: {stderr}");
    assert!(!partial.exists(), "SIG{signal}: {what} is gone");
}

#[test]
fn a_killed_converts_partial_directory_is_removed_by_the_next_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ck = large_checkpoint(tmp.path());
    // SIGKILL cannot be handled: the partial directory stays until the next conversion of the same output.
    let lay = tmp.path().join("m-KILL.spike");
    let mut child = convert(&ck, &lay, "bundled").stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    let partial = tmp.path().join(format!("m-KILL.spike.partial-{}", child.id()));
    wait_for(&mut child, "the partial directory", || partial.exists());
    send(&child, "KILL");
    let status = child.wait().expect("reap convert");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(partial.exists() && !lay.exists());

    let stdout = ok(convert(&ck, &lay, "bundled").output().expect("run convert"), "convert after the kill");
    let line = format!("removed {}", partial.display());
    assert!(stdout.contains(&line) && stdout.contains("no longer running"), "{stdout}");
    assert!(!partial.exists());
    Layout::open(&lay).expect("open").verify().expect("verify");
    assert_eq!(debris(tmp.path()), Vec::<String>::new());
}

#[test]
fn an_interrupted_convert_removes_its_partial_directory_and_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ck = large_checkpoint(tmp.path());
    // The signals of `kill` and of a terminal's Ctrl-C: exit statuses 128 + 15 and 128 + 2, as a shell reports them.
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let lay = tmp.path().join(format!("m-{signal}.spike"));
        let child = default_signals(convert(&ck, &lay, "bundled"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let partial = tmp.path().join(format!("m-{signal}.spike.partial-{}", child.id()));
        interrupt(child, "the partial directory", || Some(partial.clone()).filter(|p| p.exists()), signal, code);
        assert!(!lay.exists(), "SIG{signal}: no layout");
        assert_eq!(debris(tmp.path()), Vec::<String>::new(), "SIG{signal}");
    }
    // The output can be written afterwards, with nothing stale to remove.
    let lay = tmp.path().join("m-TERM.spike");
    let stdout = ok(convert(&ck, &lay, "bundled").output().expect("run convert"), "convert after the interruptions");
    assert!(!stdout.contains("no longer running"), "{stdout}");
    Layout::open(&lay).expect("open").verify().expect("verify");
}

#[test]
fn an_interrupted_synth_removes_its_temporary_file_and_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        // About 130 MB of f32 weights: still writing the safetensors file when signalled.
        let ck = tmp.path().join(format!("ck-{signal}"));
        let shape = Shape { arch: "llama", layers: 8, d_model: 512, ffn: 2048, heads: 8 };
        let child = default_signals(synth_cmd(&shape, SEED_CK, &ck))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn synth");
        let prefix = format!(".model.safetensors.{}.", child.id());
        let temp = || entry(&ck, |n| n.starts_with(&prefix) && n.ends_with(".tmp"));
        interrupt(child, "the temporary safetensors file", temp, signal, code);
        assert_eq!(debris(&ck), Vec::<String>::new(), "SIG{signal}");
        assert_eq!(debris(tmp.path()), Vec::<String>::new(), "SIG{signal}: no lock file beside the checkpoint");
        for done in ["model.safetensors", "config.json"] {
            assert!(!ck.join(done).exists(), "SIG{signal}: no {done}: the checkpoint is not complete");
        }
    }
}

/// `spike trace` spills each layer to a folder beside its output while it runs: SIGTERM and SIGINT remove it,
/// say so, and leave no trace file.
#[test]
fn an_interrupted_trace_removes_its_spill_folder_and_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // 8 layers of d_model 512: a few seconds of tracing for 3000 tokens, so the signal finds it running.
    let shape = Shape { arch: "opt", layers: 8, d_model: 512, ffn: 2048, heads: 8 };
    let ck = synth_into(&shape, SEED_CK, &tmp.path().join("ck"));
    let text = common::corpus(tmp.path(), 120);
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let out_dir = tmp.path().join(format!("out-{signal}"));
        std::fs::create_dir(&out_dir).expect("mkdir");
        let trace = out_dir.join("t.trace");
        let child = default_signals(spike())
            .arg("trace")
            .arg("-m")
            .arg(&ck)
            .arg("-f")
            .arg(&text)
            .args(["--tokens", "3000", "-o"])
            .arg(&trace)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trace");
        interrupt(
            child,
            "the spill folder",
            || entry(&out_dir, |n| n.starts_with(".spike-trace-spill.")),
            signal,
            code,
        );
        let left: Vec<_> = std::fs::read_dir(&out_dir).expect("list").flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "SIG{signal}: nothing left beside the trace's place: {left:?}");
    }
}
