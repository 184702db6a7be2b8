//! The neuron cache ("LLM in a flash", Sec. 3.3): per layer, the FFN records of the neurons kept in DRAM.
//!
//! A [`LayerCache`] owns one preallocated matrix of `capacity` rows of `record_bytes` each (a row is one
//! neuron's record as the flash layout stores it: gate row, up row and down column, in the layout's encoding),
//! a map neuron -> slot (`Vec<u32>`, no hashing) and its inverse slot -> neuron. What holds at all times:
//!
//! - Rows `0..len` are in use, densely: the cached neurons form one neuron-major matrix ([`LayerCache::rows`])
//!   whose row `i` belongs to neuron [`neurons()`](LayerCache::neurons)`[i]`, and each row holds exactly the
//!   bytes last inserted for that neuron.
//! - Deleting a neuron moves the last row into its slot; a new neuron is appended, or, when the policy
//!   replaces a victim, written into the victim's slot. Nothing is allocated after [`LayerCache::new`]: the
//!   row matrix, the maps and the policy state have fixed sizes ([`LayerCache::bytes`]).
//! - Within a token (from [`begin_token`](LayerCache::begin_token) to [`end_token`](LayerCache::end_token))
//!   no row moves: inserts append or overwrite a victim in place, and only `end_token` deletes. A slot returned
//!   by `insert` or `slot_of` stays valid until `end_token`.
//! - A neuron active in the current token is never evicted; when every row is held by the current token, or
//!   the policy keeps nothing more, `insert` declines and the caller computes that neuron from its own buffer.
//!
//! Per token and layer the inference loop calls `begin_token(active, &mut missing)`, reads the `missing`
//! records from flash, `insert`s each (keeping the slot, or computing from its buffer when declined),
//! computes over the active rows, and calls `end_token`, which applies the window. The policies are listed at
//! [`PolicySpec`]; the DRAM budget is split among layers by [`slots_per_layer`].
//!
//! Costs per token: `begin_token` is O(active) (O(active log capacity) for `lfu`), `insert` O(1) (amortized
//! O(log capacity) for `lfu`) plus one record copy, `end_token` O(evicted) plus one row copy per deletion
//! (O(held log capacity) for `lfu`, where held are the current token's neurons its inserts set aside).

mod activity;
mod budget;
mod frequency;
mod policy;
mod recency;
mod stats;

pub use activity::SyntheticActivity;
pub use budget::{slots_per_layer, Budget};
pub use policy::PolicySpec;
pub use stats::CacheStats;

use frequency::FreqHeap;
use recency::{RecencyList, NIL};

use crate::{Error, Result};

/// The row matrix and the two maps between neurons and slots.
#[derive(Debug)]
struct Store {
    data: Vec<u8>,
    record_bytes: usize,
    len: usize,
    slot_neuron: Vec<u32>,
    neuron_slot: Vec<u32>,
}

impl Store {
    #[inline]
    fn row_mut(&mut self, slot: usize) -> &mut [u8] {
        let rb = self.record_bytes;
        &mut self.data[slot * rb..(slot + 1) * rb]
    }

    #[inline]
    fn bind(&mut self, slot: usize, neuron: u32) {
        self.slot_neuron[slot] = neuron;
        self.neuron_slot[neuron as usize] = slot as u32;
    }

    /// Writes `neuron`'s row at the next free slot, if `fill` succeeds; the slot is used only then.
    fn append_with(&mut self, neuron: u32, fill: impl FnOnce(&mut [u8]) -> Result<()>) -> Result<u32> {
        let slot = self.len;
        assert!(slot < self.slot_neuron.len(), "cache policy appended beyond its capacity");
        fill(self.row_mut(slot))?;
        self.bind(slot, neuron);
        self.len += 1;
        Ok(slot as u32)
    }

    /// Drops `victim` and writes `neuron`'s record into its slot.
    fn replace(&mut self, victim: u32, neuron: u32, record: &[u8]) -> u32 {
        let slot = self.neuron_slot[victim as usize] as usize;
        self.neuron_slot[victim as usize] = NIL;
        self.row_mut(slot).copy_from_slice(record);
        self.bind(slot, neuron);
        slot as u32
    }

    /// Drops `neuron`, moving the last row into its slot; returns whether a row moved.
    fn delete(&mut self, neuron: u32) -> bool {
        let slot = self.neuron_slot[neuron as usize] as usize;
        self.neuron_slot[neuron as usize] = NIL;
        let last = self.len - 1;
        self.len = last;
        if slot == last {
            return false;
        }
        let rb = self.record_bytes;
        self.data.copy_within(last * rb..(last + 1) * rb, slot * rb);
        let moved = self.slot_neuron[last];
        self.bind(slot, moved);
        true
    }
}

/// How the policy treats neurons outside the pinned set.
#[derive(Debug)]
enum Dynamic {
    /// Keeps none of them (`none`, `all`, `hot:F`).
    Decline,
    /// Recency order; with a window, `end_token` drops neurons not active in its last `window` tokens.
    Recency { list: RecencyList, window: Option<u64> },
    /// Frequency order (`lfu`). `freq` counts each neuron's active tokens, `seq` numbers touches.
    Frequency { heap: FreqHeap, freq: Vec<u32>, seq: u64 },
}

/// One layer's neuron cache. See the [module documentation](self) for what holds.
#[derive(Debug)]
pub struct LayerCache {
    spec: PolicySpec,
    n_neurons: usize,
    store: Store,
    /// Per neuron: the last token it was active in (0: never). Tokens are numbered from 1.
    last_active: Vec<u64>,
    /// Per neuron: whether it belongs to the static set (`all`, `hot:F`), which is never evicted.
    pinned: Vec<bool>,
    /// The static set, in fill order (the hot list's order).
    pinned_list: Vec<u32>,
    dynamic: Dynamic,
    /// Rows the dynamic part may use (`capacity - pinned_list.len()`), and uses.
    dyn_limit: usize,
    dyn_len: usize,
    now: u64,
    in_token: bool,
    stats: CacheStats,
    /// `bytes()`, fixed at construction.
    footprint: u64,
}

/// The row slots a policy allocates out of `capacity_slots` for a layer of `n_neurons`.
fn slots_for(spec: &PolicySpec, n_neurons: usize, capacity_slots: usize) -> usize {
    capacity_slots.min(spec.max_slots(n_neurons))
}

impl LayerCache {
    /// A cache of `capacity_slots` rows of `record_bytes` each, for a layer of `n_neurons` (no more rows than the
    /// policy can use: [`PolicySpec::max_slots`]). `hot` lists the layer's neurons by descending activation frequency (from trace
    /// statistics); `hot:F` pins its first `round(F * n_neurons)` entries, the other policies ignore it.
    ///
    /// Errors: `all` with fewer slots than neurons; `hot:F` without a list, with a list too short, naming a
    /// neuron twice or out of range, or with fewer slots than pinned neurons; a zero record size.
    pub fn new(
        spec: PolicySpec,
        n_neurons: usize,
        record_bytes: usize,
        capacity_slots: usize,
        hot: Option<&[u32]>,
    ) -> Result<LayerCache> {
        if record_bytes == 0 {
            return Err(Error::Invalid("neuron cache: records of 0 bytes".into()));
        }
        if n_neurons >= NIL as usize {
            return Err(Error::Invalid(format!("neuron cache: {n_neurons} neurons per layer is too many")));
        }
        if spec == PolicySpec::All && capacity_slots < n_neurons {
            return Err(Error::Invalid(format!(
                "cache policy `all` needs a slot for each of the layer's {n_neurons} neurons, got {capacity_slots}"
            )));
        }
        let capacity = slots_for(&spec, n_neurons, capacity_slots);
        let n_pinned = spec.pinned_count(n_neurons);
        if n_pinned > capacity {
            return Err(Error::Invalid(format!(
                "cache policy `{spec}` pins {n_pinned} of the layer's {n_neurons} neurons, but the cache has \
                 {capacity} slots"
            )));
        }
        let data_len = capacity
            .checked_mul(record_bytes)
            .ok_or_else(|| Error::Invalid(format!("neuron cache: {capacity} rows of {record_bytes} bytes")))?;

        let mut pinned = vec![false; n_neurons];
        let mut pinned_list = Vec::with_capacity(n_pinned);
        match spec {
            PolicySpec::All => pinned_list.extend(0..n_neurons as u32),
            PolicySpec::Hot { .. } => {
                let list = hot.ok_or_else(|| {
                    Error::Invalid(format!(
                        "cache policy `{spec}` needs a hot list (the layer's neurons by descending frequency)"
                    ))
                })?;
                if list.len() < n_pinned {
                    return Err(Error::Invalid(format!(
                        "cache policy `{spec}` pins {n_pinned} neurons, the hot list has {}",
                        list.len()
                    )));
                }
                pinned_list.extend_from_slice(&list[..n_pinned]);
            }
            _ => {}
        }
        for &n in &pinned_list {
            match pinned.get_mut(n as usize) {
                None => {
                    return Err(Error::Invalid(format!(
                        "hot list: neuron {n} is out of range for a layer of {n_neurons} neurons"
                    )))
                }
                Some(true) => return Err(Error::Invalid(format!("hot list: neuron {n} appears twice"))),
                Some(p) => *p = true,
            }
        }

        let dyn_limit = capacity - n_pinned;
        let dynamic = match spec {
            PolicySpec::None | PolicySpec::All | PolicySpec::Hot { window: None, .. } => Dynamic::Decline,
            PolicySpec::Window(k) | PolicySpec::Hot { window: Some(k), .. } => {
                Dynamic::Recency { list: RecencyList::new(n_neurons), window: Some(u64::from(k)) }
            }
            PolicySpec::Lru => Dynamic::Recency { list: RecencyList::new(n_neurons), window: None },
            PolicySpec::Lfu => {
                Dynamic::Frequency { heap: FreqHeap::new(n_neurons, dyn_limit), freq: vec![0; n_neurons], seq: 0 }
            }
        };
        let mut cache = LayerCache {
            spec,
            n_neurons,
            store: Store {
                data: vec![0; data_len],
                record_bytes,
                len: 0,
                slot_neuron: vec![NIL; capacity],
                neuron_slot: vec![NIL; n_neurons],
            },
            last_active: vec![0; n_neurons],
            pinned,
            pinned_list,
            dynamic,
            dyn_limit,
            dyn_len: 0,
            now: 0,
            in_token: false,
            stats: CacheStats::default(),
            footprint: 0,
        };
        cache.footprint = cache.buffers().iter().map(|b| b.2 as u64).sum();
        debug_assert_eq!(cache.footprint, Self::footprint(&spec, n_neurons, record_bytes, capacity_slots));
        Ok(cache)
    }

    /// The DRAM bytes [`new`](Self::new) allocates for these arguments (when it succeeds): rows, maps and
    /// policy state. Affine in the slot count, `fixed + slots * per-slot` for `slots <= n_neurons`.
    pub fn footprint(spec: &PolicySpec, n_neurons: usize, record_bytes: usize, capacity_slots: usize) -> u64 {
        let cap = slots_for(spec, n_neurons, capacity_slots) as u64;
        let n = n_neurons as u64;
        let n_pinned = spec.pinned_count(n_neurons) as u64;
        // rows + slot->neuron + neuron->slot + last_active + pinned flags + pinned list
        let base = cap * record_bytes as u64 + cap * 4 + n * 4 + n * 8 + n + n_pinned * 4;
        let dynamic = match spec {
            PolicySpec::None | PolicySpec::All | PolicySpec::Hot { window: None, .. } => 0,
            PolicySpec::Window(_) | PolicySpec::Lru | PolicySpec::Hot { window: Some(_), .. } => {
                RecencyList::bytes_for(n_neurons)
            }
            // heap + frequencies
            PolicySpec::Lfu => FreqHeap::bytes_for(n_neurons, (cap - n_pinned) as usize) + n * 4,
        };
        base + dynamic
    }

    /// Starts a token: `active` (strictly ascending neuron ids) are the neurons this token computes.
    /// Fills `missing` with the active neurons not cached, ascending, which the caller reads from flash and
    /// passes to [`insert`](Self::insert). Counts hits and misses and records the use of the cached ones.
    ///
    /// `missing` grows to `active.len()` at most; give it that capacity once and it is never reallocated.
    ///
    /// # Panics
    /// If the previous token was not ended, or `active` is not strictly ascending or names a neuron out of range.
    pub fn begin_token(&mut self, active: &[u32], missing: &mut Vec<u32>) {
        assert!(!self.in_token, "begin_token: the previous token was not ended with end_token");
        assert!(active.windows(2).all(|w| w[0] < w[1]), "begin_token: active neurons are not strictly ascending");
        if let Some(&last) = active.last() {
            assert!(
                (last as usize) < self.n_neurons,
                "begin_token: neuron {last} is out of range for a layer of {} neurons",
                self.n_neurons
            );
        }
        self.in_token = true;
        self.now += 1;
        self.stats.tokens += 1;
        missing.clear();
        missing.reserve(active.len());
        let now = self.now;
        let (slots, last_active, pinned) = (&self.store.neuron_slot, &mut self.last_active, &self.pinned);
        match &mut self.dynamic {
            Dynamic::Decline => {
                for &n in active {
                    last_active[n as usize] = now;
                    if slots[n as usize] == NIL {
                        missing.push(n);
                    }
                }
            }
            Dynamic::Recency { list, .. } => {
                for &n in active {
                    last_active[n as usize] = now;
                    if slots[n as usize] == NIL {
                        missing.push(n);
                    } else if !pinned[n as usize] {
                        list.touch(n);
                    }
                }
            }
            Dynamic::Frequency { heap, freq, seq } => {
                for &n in active {
                    let i = n as usize;
                    last_active[i] = now;
                    freq[i] = freq[i].saturating_add(1);
                    if slots[i] == NIL {
                        missing.push(n);
                    } else if !pinned[i] {
                        *seq += 1;
                        heap.update(n, frequency::key(freq[i], *seq));
                    }
                }
            }
        }
        self.stats.misses += missing.len() as u64;
        self.stats.hits += (active.len() - missing.len()) as u64;
    }

    /// Offers the record of `neuron`, an active neuron of the current token that [`begin_token`]
    /// (Self::begin_token) reported missing. Returns the slot it was stored in (evicting a neuron not active
    /// in this token if the policy's rows are full), or `None` when the policy declines to keep it: then the
    /// caller computes the neuron from its own copy this token. A neuron already cached keeps its row and slot.
    ///
    /// # Panics
    /// Outside a token, if `record` is not `record_bytes` long, or if `neuron` is not active in this token.
    pub fn insert(&mut self, neuron: u32, record: &[u8]) -> Option<u32> {
        assert!(self.in_token, "insert outside a token: call begin_token first");
        assert_eq!(record.len(), self.store.record_bytes, "insert: record of neuron {neuron} has the wrong size");
        let i = neuron as usize;
        assert!(
            i < self.n_neurons && self.last_active[i] == self.now,
            "insert: neuron {neuron} is not active in this token"
        );
        let slot = self.store.neuron_slot[i];
        if slot != NIL {
            return Some(slot);
        }
        enum Place {
            Append,
            Replace(u32),
            Decline,
        }
        let place = if self.pinned[i] {
            // The dynamic part never takes the rows reserved for the pinned set, so one is free.
            Place::Append
        } else {
            let has_room = self.dyn_len < self.dyn_limit;
            let now = self.now;
            let last_active = &self.last_active;
            match &mut self.dynamic {
                Dynamic::Decline => Place::Decline,
                Dynamic::Recency { list, .. } => {
                    if has_room {
                        list.push_front(neuron);
                        Place::Append
                    } else {
                        // The oldest neuron is active now only if every row in the list is.
                        match list.oldest() {
                            Some(v) if last_active[v as usize] != now => {
                                list.unlink(v);
                                list.push_front(neuron);
                                Place::Replace(v)
                            }
                            _ => Place::Decline,
                        }
                    }
                }
                Dynamic::Frequency { heap, freq, seq } => {
                    *seq += 1;
                    let key = frequency::key(freq[i], *seq);
                    if has_room {
                        heap.push(neuron, key);
                        Place::Append
                    } else {
                        loop {
                            match heap.peek() {
                                // The current token's neurons are set aside until end_token.
                                Some((v, _)) if last_active[v as usize] == now => heap.hold_root(),
                                Some((v, _)) if freq[v as usize] < freq[i] => {
                                    heap.replace_root(neuron, key);
                                    break Place::Replace(v);
                                }
                                _ => break Place::Decline,
                            }
                        }
                    }
                }
            }
        };
        let slot = match place {
            Place::Decline => {
                self.stats.declined += 1;
                return None;
            }
            Place::Append => {
                if !self.pinned[i] {
                    self.dyn_len += 1;
                }
                self.store
                    .append_with(neuron, |row| {
                        row.copy_from_slice(record);
                        Ok(())
                    })
                    .expect("copying a record cannot fail")
            }
            Place::Replace(victim) => {
                self.stats.evictions += 1;
                self.store.replace(victim, neuron, record)
            }
        };
        self.stats.inserts += 1;
        self.stats.bytes_copied += self.store.record_bytes as u64;
        Some(slot)
    }

    /// Ends the token: the window drops the neurons not active in its last `K` tokens (each deletion moves the
    /// last row into the freed slot), and `lfu` releases the current token's neurons for replacement.
    ///
    /// # Panics
    /// Outside a token.
    pub fn end_token(&mut self) {
        assert!(self.in_token, "end_token without begin_token");
        self.in_token = false;
        let now = self.now;
        match &mut self.dynamic {
            Dynamic::Decline => {}
            Dynamic::Recency { list, window } => {
                let Some(k) = *window else { return };
                // The list is in order of last use, so the neurons out of the window are its oldest.
                while let Some(v) = list.oldest() {
                    if self.last_active[v as usize] + k > now {
                        break;
                    }
                    list.unlink(v);
                    self.dyn_len -= 1;
                    self.stats.evictions += 1;
                    if self.store.delete(v) {
                        self.stats.rows_moved += 1;
                        self.stats.bytes_copied += self.store.record_bytes as u64;
                    }
                }
            }
            Dynamic::Frequency { heap, .. } => heap.release(),
        }
    }

    /// Fills the policy's static set from `read(neuron, row)`, which writes the neuron's record into `row`:
    /// every neuron for `all`, the pinned hot set for `hot:F` (in hot-list order); nothing for the other
    /// policies. Neurons already cached are skipped; on an error the neurons filled so far stay cached.
    /// Filled records count as `prefilled`, not as misses or inserts.
    ///
    /// # Panics
    /// Within a token.
    pub fn fill_all(&mut self, mut read: impl FnMut(u32, &mut [u8]) -> Result<()>) -> Result<()> {
        assert!(!self.in_token, "fill_all within a token");
        for k in 0..self.pinned_list.len() {
            let n = self.pinned_list[k];
            if self.store.neuron_slot[n as usize] != NIL {
                continue;
            }
            self.store.append_with(n, |row| read(n, row))?;
            self.stats.prefilled += 1;
        }
        Ok(())
    }

    /// The record of the neuron in `slot`.
    ///
    /// # Panics
    /// If `slot >= len()`.
    #[inline]
    pub fn row(&self, slot: u32) -> &[u8] {
        let s = slot as usize;
        assert!(s < self.store.len, "row: slot {slot} is not in use ({} rows)", self.store.len);
        let rb = self.store.record_bytes;
        &self.store.data[s * rb..(s + 1) * rb]
    }

    /// The slot of `neuron`, if cached.
    #[inline]
    pub fn slot_of(&self, neuron: u32) -> Option<u32> {
        match self.store.neuron_slot.get(neuron as usize) {
            Some(&s) if s != NIL => Some(s),
            _ => None,
        }
    }

    /// The record of `neuron`, if cached.
    #[inline]
    pub fn row_of(&self, neuron: u32) -> Option<&[u8]> {
        self.slot_of(neuron).map(|s| self.row(s))
    }

    /// Whether `neuron` is cached.
    #[inline]
    pub fn contains(&self, neuron: u32) -> bool {
        self.slot_of(neuron).is_some()
    }

    /// The cached neurons by slot: `neurons()[s]` is the neuron in slot `s`.
    #[inline]
    pub fn neurons(&self) -> &[u32] {
        &self.store.slot_neuron[..self.store.len]
    }

    /// The cached rows as one neuron-major matrix of `len()` rows of `record_bytes()`, in slot order.
    #[inline]
    pub fn rows(&self) -> &[u8] {
        &self.store.data[..self.store.len * self.store.record_bytes]
    }

    /// (neuron, slot) of every cached neuron, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.neurons().iter().enumerate().map(|(s, &n)| (n, s as u32))
    }

    /// Cached neurons.
    #[inline]
    pub fn len(&self) -> usize {
        self.store.len
    }

    /// Whether nothing is cached.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.store.len == 0
    }

    /// Row slots allocated.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.store.slot_neuron.len()
    }

    /// Bytes per row.
    #[inline]
    pub fn record_bytes(&self) -> usize {
        self.store.record_bytes
    }

    /// Neurons of the layer.
    #[inline]
    pub fn n_neurons(&self) -> usize {
        self.n_neurons
    }

    /// The policy.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// The static set (every neuron for `all`, the hot set for `hot:F`, empty otherwise), in fill order.
    pub fn pinned(&self) -> &[u32] {
        &self.pinned_list
    }

    /// The counters since construction or [`reset_stats`](Self::reset_stats), with the current row count,
    /// capacity and footprint.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            rows: self.store.len as u64,
            capacity: self.capacity() as u64,
            dram_bytes: self.bytes(),
            ..self.stats.clone()
        }
    }

    /// Zeroes the counters (not the cached rows, recency or frequencies).
    pub fn reset_stats(&mut self) {
        self.stats = CacheStats::default();
    }

    /// DRAM held: the row matrix, the maps and the policy state, all allocated at construction.
    pub fn bytes(&self) -> u64 {
        self.footprint
    }

    /// Every buffer the cache owns as (name, address, bytes allocated). Constant from construction on: the
    /// cache never reallocates (its tests check this).
    pub fn buffers(&self) -> Vec<(&'static str, usize, usize)> {
        fn buf<T>(name: &'static str, v: &Vec<T>) -> (&'static str, usize, usize) {
            (name, v.as_ptr() as usize, v.capacity() * std::mem::size_of::<T>())
        }
        let mut out = vec![
            buf("rows", &self.store.data),
            buf("slot_neuron", &self.store.slot_neuron),
            buf("neuron_slot", &self.store.neuron_slot),
            buf("last_active", &self.last_active),
            buf("pinned", &self.pinned),
            buf("pinned_list", &self.pinned_list),
        ];
        match &self.dynamic {
            Dynamic::Decline => {}
            Dynamic::Recency { list, .. } => out.extend(list.buffers()),
            Dynamic::Frequency { heap, freq, .. } => {
                out.extend(heap.buffers());
                out.push(buf("frequency.freq", freq));
            }
        }
        out
    }
}
