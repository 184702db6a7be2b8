//! The lane layout of the batched quantized kernels: 8-bit values rearranged so that each 32-bit lane of a
//! 512-bit register holds 4 values of one block, and a block's 32 values meet in one lane (or a few) over
//! consecutive registers.
//!
//! # Why
//!
//! In ggml's order a 512-bit register holds two whole blocks, so every integer dot product (`vpdpbusd`) is
//! followed by its own conversion to f32, scale product and FMA: three float operations per integer one,
//! which bound the batched kernels far below the integer units' rate. In the lane layout the blocks of a
//! group are spread over the 16 lanes and a block's values over consecutive steps, so the integer dot
//! products of a whole group accumulate in one register (exactly, in i32) before one conversion, one scale
//! product and one FMA: a sixteenth of the float work for a group of 16 blocks. The activations of many
//! tokens are laid out once per prepare, the weights when a tile of rows is unpacked.
//!
//! # Layout
//!
//! A row (or token) of `nb` blocks is padded with zero blocks to [`even_blocks`] and split into groups, from
//! the start: as many blocks of 16 as fit, then 8, 4 or 2 ([`group_len`]). A group of `g` blocks starting at
//! block `b0` is `g / 2` steps of 64 bytes; lane `l` (bytes `4 l .. 4 l + 4`) of step `s` holds the 4 values
//! of chunk `s * (16 / g) + l / g` of block `b0 + l % g` (chunk `c` is values `4 c .. 4 c + 4`). Every lane
//! thus sums values of one block only, and the group's lane scales ([`lane_blocks`]) scale it. The AVX2
//! kernels read each step as two 256-bit halves, lanes 0..8 and 8..16, each scaled by its own 8 lane scales.

use super::{padded_blocks, Acts};
use crate::model::quant::QK;

/// 32-bit lanes per step (one 512-bit register).
pub(super) const LANES: usize = 16;

/// Bytes per step.
pub(super) const STEP: usize = 4 * LANES;

/// Blocks of a row of `nb` blocks in the lane layout: `nb` rounded up to even (a group has at least 2).
pub(super) fn even_blocks(nb: usize) -> usize {
    nb.next_multiple_of(2)
}

/// Blocks of the group starting where `rest` (even, positive) blocks remain: the largest of 16, 8, 4, 2
/// that fits.
#[inline]
pub(super) fn group_len(rest: usize) -> usize {
    debug_assert!(rest >= 2 && rest.is_multiple_of(2));
    if rest >= 16 {
        16
    } else {
        1 << rest.ilog2()
    }
}

/// Number of groups of a row of `nbe` (even) blocks.
pub(super) fn groups(nbe: usize) -> usize {
    nbe / 16 + (nbe % 16).count_ones() as usize
}

/// Calls `f(b0, g)` for each group (first block, blocks) of a row of `nbe` (even) blocks, in order.
#[inline]
pub(super) fn for_each_group(nbe: usize, mut f: impl FnMut(usize, usize)) {
    let mut b0 = 0;
    while b0 < nbe {
        let g = group_len(nbe - b0);
        f(b0, g);
        b0 += g;
    }
}

/// For each 4-byte lane position of a row of `nbe` blocks in the lane layout, the 4-byte chunk of the row
/// in ggml's order it holds (chunk `8 b + c` is chunk `c` of block `b`).
pub(super) fn lane_chunks(nbe: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(nbe * QK / 4);
    for_each_group(nbe, |b0, g| {
        for s in 0..g / 2 {
            for l in 0..LANES {
                out.push(((b0 + l % g) * QK / 4 + s * (LANES / g) + l / g) as u32);
            }
        }
    });
    out
}

/// For each lane of each group of a row of `nbe` blocks, the block whose scale it takes: [`LANES`] per group.
pub(super) fn lane_blocks(nbe: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(groups(nbe) * LANES);
    for_each_group(nbe, |b0, g| out.extend((0..LANES).map(|l| (b0 + l % g) as u32)));
    out
}

/// Copies the values of one row in ggml's block order, `src` (at least `8 nbe` chunks of 4 bytes), into the
/// lane layout `dst` (`8 nbe` chunks), by the table of [`lane_chunks`].
#[inline]
pub(super) fn to_lanes(chunks: &[u32], src: &[u8], dst: &mut [u8]) {
    assert!(dst.len() == chunks.len() * 4 && src.len() >= dst.len(), "lane layout of {} bytes", dst.len());
    for (d, &c) in dst.chunks_exact_mut(4).zip(chunks) {
        let c = c as usize * 4;
        d.copy_from_slice(&src[c..c + 4]);
    }
}

/// Quantized activations of many tokens as the batched kernels read them: plane `hi` in the lane layout and,
/// for 16-bit activations, plane `lo`, whose integer dot products add to 255 times `hi`'s before scaling
/// (see `wide.rs`); the lane scales of each group; and per block `(scale, scale * block sum)` for the offset
/// terms, in the layout of [`Acts`] (`padded_blocks(cols)` pairs per token).
#[derive(Clone, Copy)]
pub(super) struct Batch<'a> {
    /// Tokens.
    pub n: usize,
    /// Blocks per token in the lane layout ([`even_blocks`]).
    pub nbe: usize,
    /// Blocks per token of the `(scale, scale * block sum)` pairs ([`padded_blocks`]).
    pub nbp: usize,
    pub hi: &'a [i8],
    pub lo: Option<&'a [i8]>,
    /// Per token, [`LANES`] scales per group.
    pub lane_sc: &'a [f32],
    /// Per token, `padded_blocks(cols)` pairs.
    pub sc: &'a [f32],
}

impl<'a> Batch<'a> {
    /// Plane `hi` of token `t`.
    pub fn hi_tok(&self, t: usize) -> &'a [i8] {
        let len = self.nbe * QK;
        &self.hi[t * len..(t + 1) * len]
    }

    /// Plane `lo` of token `t`, if there is one.
    pub fn lo_tok(&self, t: usize) -> Option<&'a [i8]> {
        let len = self.nbe * QK;
        self.lo.map(|lo| &lo[t * len..(t + 1) * len])
    }

    /// The lane scales of token `t`.
    pub fn lane_sc_tok(&self, t: usize) -> &'a [f32] {
        let len = groups(self.nbe) * LANES;
        &self.lane_sc[t * len..(t + 1) * len]
    }

    /// The `(scale, scale * block sum)` pairs of token `t`.
    pub fn sc_tok(&self, t: usize) -> &'a [f32] {
        let len = self.nbp * 2;
        &self.sc[t * len..(t + 1) * len]
    }
}

/// Pointers to tokens `t0 .. t0 + NT` of a [`Batch`] for a micro-kernel, whose lengths [`Batch::tokens`]
/// checked: `nbe * QK` values per plane, `groups(nbe) * LANES` lane scales and `nbp * 2` pair values per
/// token, `nbp` a multiple of 8.
pub(super) struct Tokens<const NT: usize> {
    pub hi: [*const i8; NT],
    /// Plane `lo`, or `hi` again for 8-bit activations.
    pub lo: [*const i8; NT],
    pub lane_sc: [*const f32; NT],
    pub sc: [*const f32; NT],
}

impl Batch<'_> {
    /// Tokens `t0 .. t0 + NT`; with `WIDE`, their low planes too.
    ///
    /// # Panics
    /// When the tokens are not all in the batch, or `WIDE` and the batch has no low plane.
    pub fn tokens<const NT: usize, const WIDE: bool>(&self, t0: usize) -> Tokens<NT> {
        let (len, lsl) = (self.nbe * QK, groups(self.nbe) * LANES);
        let lo = |j: usize| {
            if WIDE {
                self.lo_tok(t0 + j).expect("16-bit activations have a low plane")
            } else {
                self.hi_tok(t0 + j)
            }
        };
        let t = Tokens {
            hi: std::array::from_fn(|j| self.hi_tok(t0 + j).as_ptr()),
            lo: std::array::from_fn(|j| lo(j).as_ptr()),
            lane_sc: std::array::from_fn(|j| self.lane_sc_tok(t0 + j).as_ptr()),
            sc: std::array::from_fn(|j| self.sc_tok(t0 + j).as_ptr()),
        };
        // The slices above have these lengths by construction; the checks keep the kernels' reads honest.
        assert!((0..NT).all(|j| self.hi_tok(t0 + j).len() == len && lo(j).len() == len));
        assert!((0..NT).all(|j| self.lane_sc_tok(t0 + j).len() == lsl && self.sc_tok(t0 + j).len() == self.nbp * 2));
        assert!(self.nbp.is_multiple_of(8));
        t
    }
}

impl Acts {
    /// Fills the lane layout of every token (`lq`, `lsc`) from the quantized values and scales.
    pub(super) fn build_lanes(&mut self) {
        let nb = self.cols / QK;
        let (nbe, nbp) = (even_blocks(nb), padded_blocks(self.cols));
        let (chunks, blocks) = (lane_chunks(nbe), lane_blocks(nbe));
        self.lq.clear();
        self.lq.resize(self.n * nbe * QK, 0);
        self.lsc.clear();
        self.lsc.resize(self.n * blocks.len(), 0.0);
        for t in 0..self.n {
            // `nbe <= nbp`, so the source holds every chunk the table names (the padding is zero).
            let src = &self.q[t * nbp * QK..(t + 1) * nbp * QK];
            let dst = &mut self.lq[t * nbe * QK..(t + 1) * nbe * QK];
            to_lanes(&chunks, bytemuck_i8(src), bytemuck_i8_mut(dst));
            let sc = &self.sc[t * nbp * 2..(t + 1) * nbp * 2];
            for (o, &b) in self.lsc[t * blocks.len()..(t + 1) * blocks.len()].iter_mut().zip(&blocks) {
                *o = sc[2 * b as usize];
            }
        }
        self.lanes_built = true;
    }

    /// The lane layout of these activations, built by [`Acts::build_lanes`].
    pub(super) fn batch(&self) -> Batch<'_> {
        assert!(self.lanes_built && self.quantized, "activations without their lane layout");
        Batch {
            n: self.n,
            nbe: even_blocks(self.cols / QK),
            nbp: padded_blocks(self.cols),
            hi: &self.lq,
            lo: None,
            lane_sc: &self.lsc,
            sc: &self.sc,
        }
    }
}

/// `i8` values as bytes.
fn bytemuck_i8(v: &[i8]) -> &[u8] {
    // SAFETY: `i8` and `u8` have the same size and alignment, and every bit pattern is valid for both.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len()) }
}

/// `i8` values as bytes, mutably.
fn bytemuck_i8_mut(v: &mut [i8]) -> &mut [u8] {
    // SAFETY: as in `bytemuck_i8`; the borrow is exclusive for the lifetime of the result.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_the_row_and_each_lane_stays_in_one_block() {
        for nb in 1..80 {
            let nbe = even_blocks(nb);
            let chunks = lane_chunks(nbe);
            let blocks = lane_blocks(nbe);
            assert_eq!(chunks.len(), nbe * 8);
            assert_eq!(blocks.len(), groups(nbe) * LANES);
            // A permutation of the chunks.
            let mut seen = chunks.clone();
            seen.sort_unstable();
            assert!(seen.iter().enumerate().all(|(i, &c)| c as usize == i), "nb {nb}");
            // Lane `l` of every step of group `gi` holds chunks of block `blocks[gi * 16 + l]`.
            let (mut gi, mut at) = (0, 0);
            for_each_group(nbe, |_, g| {
                for s in 0..g / 2 {
                    for l in 0..LANES {
                        assert_eq!(chunks[at + s * LANES + l] / 8, blocks[gi * LANES + l], "nb {nb}");
                    }
                }
                at += g * 8;
                gi += 1;
            });
        }
        assert_eq!(groups(even_blocks(18)), 2);
        assert_eq!(groups(48), 3);
        assert_eq!(groups(6), 2);
    }
}
