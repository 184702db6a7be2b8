//! An intrusive doubly linked list of neuron ids in order of last use, most recent at the head: O(1) touch,
//! insert, unlink and oldest. Links live in two arrays indexed by neuron id, allocated once.

/// "No neuron": the end of the list.
pub(super) const NIL: u32 = u32::MAX;

#[derive(Debug)]
pub(super) struct RecencyList {
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
}

impl RecencyList {
    /// An empty list over neuron ids `0..n`.
    pub(super) fn new(n: usize) -> RecencyList {
        RecencyList { prev: vec![NIL; n], next: vec![NIL; n], head: NIL, tail: NIL }
    }

    /// Bytes allocated for `n` neurons.
    pub(super) fn bytes_for(n: usize) -> u64 {
        2 * n as u64 * 4
    }

    /// Adds `n`, which must not be in the list, as the most recent.
    #[inline]
    pub(super) fn push_front(&mut self, n: u32) {
        let i = n as usize;
        self.prev[i] = NIL;
        self.next[i] = self.head;
        if self.head == NIL {
            self.tail = n;
        } else {
            self.prev[self.head as usize] = n;
        }
        self.head = n;
    }

    /// Removes `n`, which must be in the list.
    #[inline]
    pub(super) fn unlink(&mut self, n: u32) {
        let i = n as usize;
        let (p, q) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = q;
        } else {
            self.next[p as usize] = q;
        }
        if q == NIL {
            self.tail = p;
        } else {
            self.prev[q as usize] = p;
        }
    }

    /// Makes `n`, which must be in the list, the most recent.
    #[inline]
    pub(super) fn touch(&mut self, n: u32) {
        if self.head != n {
            self.unlink(n);
            self.push_front(n);
        }
    }

    /// The least recently used neuron.
    #[inline]
    pub(super) fn oldest(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    pub(super) fn buffers(&self) -> [(&'static str, usize, usize); 2] {
        [
            ("recency.prev", self.prev.as_ptr() as usize, self.prev.capacity() * 4),
            ("recency.next", self.next.as_ptr() as usize, self.next.capacity() * 4),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(l: &RecencyList) -> Vec<u32> {
        let mut out = Vec::new();
        let mut c = l.head;
        while c != NIL {
            out.push(c);
            c = l.next[c as usize];
        }
        let mut back = Vec::new();
        let mut c = l.tail;
        while c != NIL {
            back.push(c);
            c = l.prev[c as usize];
        }
        back.reverse();
        assert_eq!(out, back, "forward and backward links disagree");
        out
    }

    #[test]
    fn keeps_use_order() {
        let mut l = RecencyList::new(8);
        assert_eq!(l.oldest(), None);
        for n in [3, 1, 4, 5] {
            l.push_front(n);
        }
        assert_eq!(order(&l), [5, 4, 1, 3]);
        l.touch(3);
        assert_eq!(order(&l), [3, 5, 4, 1]);
        l.touch(3);
        l.touch(4);
        assert_eq!(order(&l), [4, 3, 5, 1]);
        assert_eq!(l.oldest(), Some(1));
        l.unlink(1);
        l.unlink(4);
        assert_eq!(order(&l), [3, 5]);
        l.unlink(3);
        l.unlink(5);
        assert_eq!(order(&l), [] as [u32; 0]);
        assert_eq!(l.oldest(), None);
    }
}
