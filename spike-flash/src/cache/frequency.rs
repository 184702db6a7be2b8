//! An indexed binary min-heap of cached neurons keyed by (frequency, last touch): the root is the neuron `lfu`
//! replaces. O(log n) push, replace-root, pop and key change; positions live in an array indexed by neuron id,
//! entries in vectors whose capacity is fixed at construction. Neurons of the current token that reach the root
//! while a victim is sought are set aside (held) until the token ends, so no key changes to protect them.

use super::recency::NIL;

/// A heap key: by frequency, then by the sequence number of the last touch (older first).
#[inline]
pub(super) fn key(freq: u32, touch: u64) -> u128 {
    ((freq as u128) << 64) | touch as u128
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u128,
    neuron: u32,
}

#[derive(Debug)]
pub(super) struct FreqHeap {
    heap: Vec<Entry>,
    pos: Vec<u32>,
    /// Entries taken out of the heap for the rest of the token.
    held: Vec<Entry>,
    /// Entries at most, held ones included.
    cap: usize,
}

impl FreqHeap {
    /// An empty heap of at most `cap` neurons among ids `0..n`.
    pub(super) fn new(n: usize, cap: usize) -> FreqHeap {
        FreqHeap { heap: Vec::with_capacity(cap), pos: vec![NIL; n], held: Vec::with_capacity(cap), cap }
    }

    /// Bytes allocated for `n` neurons and `cap` entries.
    pub(super) fn bytes_for(n: usize, cap: usize) -> u64 {
        (2 * cap * std::mem::size_of::<Entry>() + n * 4) as u64
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }

    /// The neuron with the smallest key, and the key.
    #[inline]
    pub(super) fn peek(&self) -> Option<(u32, u128)> {
        self.heap.first().map(|e| (e.neuron, e.key))
    }

    /// Adds `neuron`, which must not be in the heap, while fewer than its capacity are (held ones included).
    #[inline]
    pub(super) fn push(&mut self, neuron: u32, key: u128) {
        assert!(self.heap.len() + self.held.len() < self.cap, "frequency heap is full");
        let i = self.heap.len();
        self.heap.push(Entry { key, neuron });
        self.pos[neuron as usize] = i as u32;
        self.sift_up(i);
    }

    /// Replaces the root by `neuron` with `key`; returns the neuron that was the root.
    #[inline]
    pub(super) fn replace_root(&mut self, neuron: u32, key: u128) -> u32 {
        let old = self.heap[0].neuron;
        self.pos[old as usize] = NIL;
        self.heap[0] = Entry { key, neuron };
        self.pos[neuron as usize] = 0;
        self.sift_down(0);
        old
    }

    /// Takes the root out of the heap until [`release`](Self::release).
    #[inline]
    pub(super) fn hold_root(&mut self) {
        let root = self.heap[0];
        self.pos[root.neuron as usize] = NIL;
        self.held.push(root);
        let last = self.heap.pop().expect("hold_root on a non-empty heap");
        if !self.heap.is_empty() {
            self.place(0, last);
            self.sift_down(0);
        }
    }

    /// Puts the held entries back.
    pub(super) fn release(&mut self) {
        while let Some(e) = self.held.pop() {
            let i = self.heap.len();
            self.heap.push(e);
            self.pos[e.neuron as usize] = i as u32;
            self.sift_up(i);
        }
    }

    /// The key of `neuron`, which must be in the heap.
    #[cfg(test)]
    pub(super) fn key_of(&self, neuron: u32) -> u128 {
        self.heap[self.pos[neuron as usize] as usize].key
    }

    /// Changes the key of `neuron`, which must be in the heap.
    #[inline]
    pub(super) fn update(&mut self, neuron: u32, key: u128) {
        let i = self.pos[neuron as usize] as usize;
        let old = self.heap[i].key;
        self.heap[i].key = key;
        if key < old {
            self.sift_up(i);
        } else {
            self.sift_down(i);
        }
    }

    #[cfg(test)]
    fn contains(&self, neuron: u32) -> bool {
        self.pos[neuron as usize] != NIL
    }

    fn place(&mut self, i: usize, e: Entry) {
        self.heap[i] = e;
        self.pos[e.neuron as usize] = i as u32;
    }

    fn sift_up(&mut self, mut i: usize) {
        let e = self.heap[i];
        while i > 0 {
            let p = (i - 1) / 2;
            if self.heap[p].key <= e.key {
                break;
            }
            let pe = self.heap[p];
            self.place(i, pe);
            i = p;
        }
        self.place(i, e);
    }

    fn sift_down(&mut self, mut i: usize) {
        let e = self.heap[i];
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.heap[r].key < self.heap[l].key { r } else { l };
            if self.heap[c].key >= e.key {
                break;
            }
            let ce = self.heap[c];
            self.place(i, ce);
            i = c;
        }
        self.place(i, e);
    }

    pub(super) fn buffers(&self) -> [(&'static str, usize, usize); 3] {
        let entry = std::mem::size_of::<Entry>();
        [
            ("frequency.heap", self.heap.as_ptr() as usize, self.heap.capacity() * entry),
            ("frequency.pos", self.pos.as_ptr() as usize, self.pos.capacity() * 4),
            ("frequency.held", self.held.as_ptr() as usize, self.held.capacity() * entry),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn root_is_the_minimum_after_random_operations() {
        const SEED_HEAP_OPS: u64 = 0x4EA9;
        let mut rng = StdRng::seed_from_u64(SEED_HEAP_OPS);
        let n = 64;
        let mut h = FreqHeap::new(n, 40);
        // Per neuron: its key, and whether it is held.
        let mut reference: Vec<Option<(u128, bool)>> = vec![None; n];
        for step in 0..5000 {
            if step % 50 == 49 {
                h.release();
                reference.iter_mut().flatten().for_each(|r| r.1 = false);
            }
            let x = rng.gen_range(0..n as u32);
            let k = key(rng.gen_range(0..8), rng.gen_range(0..1000));
            if h.contains(x) {
                h.update(x, k);
                reference[x as usize] = Some((k, false));
            } else if reference[x as usize].is_some() {
                // Held: left alone until released.
            } else if h.len() + h.held.len() < 40 {
                h.push(x, k);
                reference[x as usize] = Some((k, false));
            } else if h.len() > 0 && rng.gen_bool(0.3) {
                let (root, _) = h.peek().unwrap();
                h.hold_root();
                reference[root as usize].as_mut().unwrap().1 = true;
            } else if h.len() > 0 {
                let (old, _) = h.peek().unwrap();
                assert_eq!(h.replace_root(x, k), old);
                reference[old as usize] = None;
                reference[x as usize] = Some((k, false));
            }
            let min = reference.iter().flatten().filter(|r| !r.1).map(|r| r.0).min();
            assert_eq!(h.peek().map(|(_, k)| k), min);
            for (i, r) in reference.iter().enumerate() {
                assert_eq!(h.contains(i as u32), matches!(r, Some((_, false))));
                if let Some((k, false)) = r {
                    assert_eq!(h.key_of(i as u32), *k);
                }
            }
        }
    }
}
