//! A scratch file for read measurements and tests: pattern bytes (never zero, different from block to block,
//! so a read that returned zeros or the wrong block is caught) in a file that has no name.
//!
//! The file is created with `O_TMPFILE` in the chosen folder, so the kernel frees it when the process exits,
//! however it exits (error, Ctrl-C, kill). Where `O_TMPFILE` is unsupported the file is created under a name
//! and unlinked at once, leaving a window of one system call.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The byte the scratch files hold at `offset`: never zero, different from block to block, so a read that
/// returned zeros or the wrong block is caught.
pub fn pattern_byte(offset: u64) -> u8 {
    (splitmix64(offset >> 3) >> ((offset & 7) * 8)) as u8 | 1
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `out` with [`pattern_byte`] of `offset..offset + out.len()`.
pub fn fill_pattern(offset: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
}

/// An unnamed file of pattern bytes that vanishes with the process (see the module documentation).
pub struct ScratchFile {
    file: File,
    /// `/proc/self/fd/N`: a path through which the file can be opened again, with O_DIRECT.
    path: PathBuf,
    dir: PathBuf,
    len: u64,
}

impl ScratchFile {
    /// Creates a file of `len` [`pattern_byte`]s in `dir`, fsynced and dropped from the page cache.
    pub fn create(dir: &Path, len: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let file = match std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_TMPFILE).open(dir) {
            Ok(f) => f,
            Err(_) => {
                let named = dir.join(format!(".spike-scratch-{}", std::process::id()));
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&named)
                    .map_err(|e| Error::io(&named, e))?;
                std::fs::remove_file(&named).map_err(|e| Error::io(&named, e))?;
                f
            }
        };
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let chunk = 8 << 20;
        let mut block = vec![0u8; chunk];
        let mut at = 0u64;
        while at < len {
            let n = chunk.min((len - at) as usize);
            fill_pattern(at, &mut block[..n]);
            file.write_all_at(&block[..n], at).map_err(|e| Error::io(dir, e))?;
            at += n as u64;
        }
        file.sync_all().map_err(|e| Error::io(dir, e))?;
        // SAFETY: `posix_fadvise` only reads its integer arguments; the descriptor is open for the whole call.
        // Dropping the cached pages is a courtesy (O_DIRECT reads bypass them anyway), so its result is ignored.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        Ok(ScratchFile { file, path, dir: dir.to_path_buf(), len })
    }

    /// A path that opens this file (valid while `self` lives, in this process only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder it lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_nonzero_and_varies() {
        let mut v = vec![0u8; 8192];
        fill_pattern(4096, &mut v);
        assert!(v.iter().all(|&b| b != 0));
        assert_eq!(v[5], pattern_byte(4101));
        let mut w = vec![0u8; 8192];
        fill_pattern(0, &mut w);
        assert_ne!(v[..4096], w[..4096]);
    }

    #[test]
    fn scratch_file_is_unnamed_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let s = ScratchFile::create(dir.path(), 1 << 20).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the scratch file has no name");
        let data = std::fs::read(s.path()).unwrap();
        assert_eq!(data.len(), 1 << 20);
        assert_eq!(data[12345], pattern_byte(12345));
    }
}
