//! I/O: file mapping now; the flash read backends later.
