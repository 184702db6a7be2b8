//! [`AlignedBuf`]: a heap buffer whose start is aligned for O_DIRECT.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::{Error, Result};

/// The alignment [`AlignedBuf::new`] uses: one page, which satisfies O_DIRECT on every device this toolkit
/// targets (their logical blocks are 512 B or 4 KiB).
pub const DEFAULT_ALIGN: usize = 4096;

/// A zero-initialised heap buffer whose first byte is aligned to a power of two (at least 512).
///
/// The caller owns it and reuses it from batch to batch. A read backend borrows it mutably for the whole of
/// [`ReadBackend::read_batch`](super::ReadBackend::read_batch), so it can neither be reallocated nor dropped
/// while a read into it is in flight. Its capacity only grows, in [`AlignedBuf::resize`].
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes allocated, a multiple of `align` and at least `align`; `len <= cap`.
    cap: usize,
    align: usize,
}

// SAFETY: an `AlignedBuf` owns its allocation exclusively, like a `Vec<u8>`; nothing in it is tied to a thread.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`; mutation needs `&mut self`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `len` zero bytes aligned to [`DEFAULT_ALIGN`].
    pub fn new(len: usize) -> Result<Self> {
        Self::with_align(len, DEFAULT_ALIGN)
    }

    /// A buffer of `len` zero bytes aligned to `align`, a power of two of at least 512.
    pub fn with_align(len: usize, align: usize) -> Result<Self> {
        if !align.is_power_of_two() || align < 512 {
            return Err(Error::Invalid(format!("buffer alignment {align} is not a power of two >= 512")));
        }
        let cap = Self::round_cap(len, align)?;
        let ptr = Self::alloc(cap, align)?;
        Ok(AlignedBuf { ptr, len, cap, align })
    }

    fn round_cap(len: usize, align: usize) -> Result<usize> {
        len.max(1)
            .checked_next_multiple_of(align)
            .filter(|&c| c <= isize::MAX as usize)
            .ok_or_else(|| Error::Invalid(format!("buffer of {len} bytes is too large")))
    }

    fn alloc(cap: usize, align: usize) -> Result<NonNull<u8>> {
        let layout = Layout::from_size_align(cap, align)
            .map_err(|e| Error::Invalid(format!("buffer of {cap} bytes aligned to {align}: {e}")))?;
        // SAFETY: `layout` has a non-zero size (`cap >= align >= 512`).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        NonNull::new(raw).ok_or_else(|| Error::Invalid(format!("out of memory allocating {cap} bytes")))
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The alignment of the first byte.
    pub fn align(&self) -> usize {
        self.align
    }

    /// Bytes allocated (at least `len`).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the length to `len`. Bytes past the old length read as zero or as what an earlier use left there
    /// (they are always initialised). Reallocates, keeping the alignment, only when `len` exceeds the
    /// capacity; the old content is not preserved then.
    pub fn resize(&mut self, len: usize) -> Result<()> {
        if len > self.cap {
            let cap = Self::round_cap(len, self.align)?;
            let ptr = Self::alloc(cap, self.align)?;
            self.free();
            self.ptr = ptr;
            self.cap = cap;
        }
        self.len = len;
        Ok(())
    }

    /// Grows the capacity to at least `cap` bytes, keeping the length; like [`AlignedBuf::resize`], the old
    /// content is not preserved when it reallocates.
    pub fn reserve(&mut self, cap: usize) -> Result<()> {
        let len = self.len;
        self.resize(cap.max(len))?;
        self.len = len;
        Ok(())
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `cap >= len` initialised bytes (allocated zeroed) owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The buffer's bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only live reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The address of the first byte, for handing to the kernel.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn free(&mut self) {
        let layout = Layout::from_size_align(self.cap, self.align).expect("the layout was valid when allocated");
        // SAFETY: `ptr` was allocated by `alloc_zeroed` with exactly this layout and is freed once: `free` is
        // called only from `resize` (which replaces `ptr` right after) and `drop`.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.free();
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .field("align", &self.align)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_resizable() {
        for align in [512, 4096, 65536] {
            let mut b = AlignedBuf::with_align(1000, align).unwrap();
            assert_eq!(b.as_mut_ptr() as usize % align, 0);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice()[999] = 7;
            b.resize(10).unwrap();
            assert_eq!(b.len(), 10);
            b.resize(3 * align + 1).unwrap();
            assert_eq!(b.as_mut_ptr() as usize % align, 0);
            assert_eq!(b.capacity() % align, 0);
        }
        assert!(AlignedBuf::with_align(1, 256).is_err());
        assert!(AlignedBuf::with_align(1, 3000).is_err());
        assert!(AlignedBuf::new(0).unwrap().is_empty());
    }
}
