//! Installing outputs: two writers of one output give one result and one refusal, never one replacing the
//! other; leftovers of dead writers are removed by the next writer and reported; temporary files do not
//! survive an error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use spike_flash::engine::model::Model;
use spike_flash::io::install::{self, OutputLock};
use spike_flash::layout::{self, ConvertOptions, Layout, LayoutKind};
use spike_flash::model::bind::Source;
use spike_flash::model::quant::DType;
use spike_flash::model::synth::{self, SynthSpec};
use spike_flash::Error;

/// Seed of the tiny model every test converts.
const SEED_MODEL: u64 = 0x1A57;

fn tiny_gguf(dir: &Path) -> (PathBuf, Arc<Model>) {
    let bytes = synth::llama_gguf(&SynthSpec::tiny_gguf(DType::Q4_1, SEED_MODEL)).unwrap();
    let path = dir.join("tiny.gguf");
    fs::write(&path, bytes).unwrap();
    let model = Model::from_source(&Source::open(&path).unwrap()).unwrap();
    (path, Arc::new(model))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The id of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().unwrap();
    assert!(!install::process_alive(pid), "process {pid} was reaped");
    pid
}

#[test]
fn concurrent_conversions_of_one_output_give_one_layout_and_one_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, model) = tiny_gguf(tmp.path());
    let mut busy = 0;
    for round in 0..8 {
        let out = tmp.path().join(format!("same-{round}.spike"));
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [LayoutKind::Split, LayoutKind::Bundled]
            .into_iter()
            .map(|kind| {
                let (model, path, out, barrier) = (model.clone(), path.clone(), out.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = layout::write(&*model, &path, &out, &ConvertOptions { kind, ..Default::default() });
                    (kind, r)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let won: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).map(|(k, _)| *k).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        for (_, r) in &results {
            match r {
                Ok(_) => {}
                Err(Error::OutputBusy { path, .. }) => {
                    assert_eq!(path, &out);
                    busy += 1;
                }
                // The other writer finished before this one took the lock.
                Err(Error::OutputExists { path }) => assert_eq!(path, &out),
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
        }
        let lay = Layout::open(&out).unwrap();
        assert_eq!(lay.manifest().kind, won[0], "round {round}: the layout is the winner's");
        lay.verify().unwrap();
    }
    eprintln!("{busy} of 8 rounds overlapped (refused as busy rather than as existing)");
    let left: Vec<String> =
        names(tmp.path()).into_iter().filter(|n| n.contains("partial") || n.ends_with(".lock")).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_held_lock_refuses_writers_even_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, model) = tiny_gguf(tmp.path());
    let out = tmp.path().join("m.spike");
    layout::write(&*model, &path, &out, &ConvertOptions::default()).unwrap();
    let id = Layout::open(&out).unwrap().manifest().layout_id.clone();

    let lock = OutputLock::acquire(&out).unwrap();
    for force in [false, true] {
        let o = ConvertOptions { force, kind: LayoutKind::Split, ..Default::default() };
        match layout::write(&*model, &path, &out, &o) {
            Err(Error::OutputBusy { path: p, lock: l }) => {
                assert_eq!(p, out);
                assert_eq!(l, lock.path());
            }
            other => panic!("force {force}: expected OutputBusy, got {other:?}"),
        }
        let fresh = tmp.path().join("fresh.spike");
        let _other = OutputLock::acquire(&fresh).unwrap();
        assert!(matches!(layout::write(&*model, &path, &fresh, &o), Err(Error::OutputBusy { .. })));
        assert!(!fresh.exists());
    }
    assert_eq!(Layout::open(&out).unwrap().manifest().layout_id, id, "the held output is untouched");
    drop(lock);
    assert!(!OutputLock::path_for(&out).exists(), "the lock file goes with the lock");

    // Released: --force replaces it, in one swap, and leaves nothing beside it.
    let o = ConvertOptions { force: true, kind: LayoutKind::Split, ..Default::default() };
    layout::write(&*model, &path, &out, &o).unwrap();
    let lay = Layout::open(&out).unwrap();
    assert_ne!(lay.manifest().layout_id, id);
    assert_eq!(lay.manifest().kind, LayoutKind::Split);
    lay.verify().unwrap();
    assert_eq!(names(tmp.path()), ["m.spike", "tiny.gguf"]);
}

#[test]
fn partial_outputs_of_dead_writers_are_removed_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, model) = tiny_gguf(tmp.path());
    let dead = dead_pid();
    let stale = tmp.path().join(format!("m.spike.partial-{dead}"));
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join("ffn.bin"), vec![7u8; 1000]).unwrap();
    // Not this output's, or not a partial name, or its writer is running (pid 1 always is): kept.
    let other = tmp.path().join(format!("other.spike.partial-{dead}"));
    fs::create_dir(&other).unwrap();
    let odd = tmp.path().join("m.spike.partial-12x");
    fs::create_dir(&odd).unwrap();
    let running = tmp.path().join("m.spike.partial-1");
    fs::create_dir(&running).unwrap();

    let out = tmp.path().join("m.spike");
    let s = layout::write(&*model, &path, &out, &ConvertOptions::default()).unwrap();
    assert_eq!(s.removed_stale.len(), 1, "{:?}", s.removed_stale);
    assert_eq!(s.removed_stale[0].path, stale);
    assert_eq!(s.removed_stale[0].pid, dead);
    assert_eq!(s.removed_stale[0].bytes, 1000);
    let line = s.removed_stale[0].to_string();
    assert!(line.contains(&format!("process {dead} which is no longer running")), "{line}");
    assert!(!stale.exists());
    assert!(other.exists() && odd.exists() && running.exists());
    Layout::open(&out).unwrap().verify().unwrap();

    // A refused conversion still cleans (it held the lock), and a later one finds nothing more.
    fs::create_dir(&stale).unwrap();
    assert!(matches!(layout::write(&*model, &path, &out, &ConvertOptions::default()), Err(Error::OutputExists { .. })));
    assert!(!stale.exists());
    let o = ConvertOptions { force: true, ..Default::default() };
    assert!(layout::write(&*model, &path, &out, &o).unwrap().removed_stale.is_empty());
}

#[test]
fn write_atomic_refuses_a_second_writer_and_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("t.json");
    spike_flash::io::write_atomic(&target, |w| w.write_all(b"first")).unwrap();

    let lock = OutputLock::acquire(&target).unwrap();
    let e = spike_flash::io::write_atomic(&target, |w| w.write_all(b"second")).unwrap_err();
    assert!(matches!(&e, Error::OutputBusy { path, .. } if path == &target), "{e}");
    assert!(e.to_string().contains("another process is writing this output"), "{e}");
    drop(lock);
    assert_eq!(fs::read(&target).unwrap(), b"first");

    // A failing writer (as a full disk fails it) leaves the old file and nothing else.
    let e = spike_flash::io::write_atomic(&target, |w| {
        w.write_all(&[1u8; 100_000])?;
        Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
    })
    .unwrap_err();
    assert!(e.to_string().contains("No space left"), "{e}");
    assert_eq!(fs::read(&target).unwrap(), b"first");
    assert_eq!(names(tmp.path()), ["t.json"]);
}

#[test]
fn synth_cleans_dead_writers_temporaries_and_its_own_on_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    fs::create_dir(&dir).unwrap();
    let dead = dead_pid();
    let stale = dir.join(format!(".model.safetensors.{dead}.3.tmp"));
    fs::write(&stale, vec![0u8; 64]).unwrap();
    let old_style = dir.join(format!(".config.json.{dead}.tmp"));
    fs::write(&old_style, b"{").unwrap();
    let running = dir.join(".config.json.1.0.tmp");
    fs::write(&running, b"{").unwrap();

    let spec = SynthSpec::tiny_opt(0x5EED);
    let removed = synth::write_hf_checkpoint_with_progress(&spec, &dir, &mut |_| {}).unwrap();
    let paths: Vec<&Path> = removed.iter().map(|r| r.path.as_path()).collect();
    assert_eq!(paths, [old_style.as_path(), stale.as_path()]);
    assert!(removed.iter().all(|r| r.pid == dead));
    assert!(running.exists(), "a temporary of a running process is kept");
    fs::remove_file(&running).unwrap();

    // The safetensors file cannot be installed (its name is taken by a non-empty directory): the write fails
    // and its temporary file is gone.
    let dir2 = tmp.path().join("ck2");
    fs::create_dir_all(dir2.join("model.safetensors").join("x")).unwrap();
    assert!(synth::write_hf_checkpoint(&spec, &dir2).is_err());
    assert_eq!(names(&dir2), ["model.safetensors"]);
    assert!(!OutputLock::path_for(&dir2).exists());

    // Two writers of one checkpoint directory: the second is refused while the first holds it.
    let _lock = OutputLock::acquire(&dir).unwrap();
    assert!(matches!(synth::write_hf_checkpoint(&spec, &dir), Err(Error::OutputBusy { .. })));
}

#[test]
fn temporary_names_carry_their_writers_process_id() {
    let t = spike_flash::io::temp_path(Path::new("/x/config.json"));
    let name = t.file_name().unwrap().to_str().unwrap();
    assert_eq!(spike_flash::io::temp_pid(name), Some(std::process::id()), "{name}");
    assert_ne!(spike_flash::io::temp_path(Path::new("/x/config.json")), t, "each call has its own name");
    for (name, pid) in [
        (".config.json.42.7.tmp", Some(42)),
        (".config.json.42.tmp", Some(42)),
        (".model-00001-of-00002.safetensors.9.0.tmp", Some(9)),
        (".a.7.3.tmp", Some(7)),
        (".7.3.tmp", Some(3)),
        (".42.tmp", None),
        (".config.json.tmp", None),
        ("config.json.42.0.tmp", None),
        (".config.json.4x.0.tmp", None),
        (".config.json.4x.7.tmp", Some(7)),
        (".config.json.0.tmp", None),
    ] {
        assert_eq!(spike_flash::io::temp_pid(name), pid, "{name}");
    }
}
