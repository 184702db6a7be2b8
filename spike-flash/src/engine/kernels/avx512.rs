//! (in progress)

use std::ops::Range;

use super::{Acts, QMatrix};

/// # Safety
/// In progress: the scalar kernels.
pub(super) unsafe fn part(
    w: &QMatrix,
    acts: &Acts,
    rows: Range<usize>,
    toks: Range<usize>,
    put: &mut impl FnMut(usize, usize, f32),
) {
    super::scalar::part(w, acts, rows, toks, put)
}
