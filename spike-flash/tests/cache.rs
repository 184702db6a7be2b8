//! The neuron cache against a set-based reference model of each policy, plus its invariants: rows hold exactly
//! the bytes inserted for their neuron, slots are stable within a token, nothing is reallocated, and the DRAM
//! stays within the budget. Active sets come from `SyntheticActivity` with fixed named seeds.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use spike_flash::cache::{slots_per_layer, Budget, CacheStats, LayerCache, PolicySpec, SyntheticActivity};

const SEED_REFERENCE: u64 = 0x5EF0;
const SEED_ROWS: u64 = 0x2085;
const SEED_REALLOC: u64 = 0xA110C;
const SEED_BUDGET: u64 = 0xB0D6;
const SEED_WINDOW: u64 = 0x3140;

/// A record that names its neuron in every byte position: a wrong or torn row cannot pass for another's.
fn record(neuron: u32, rb: usize) -> Vec<u8> {
    (0..rb).map(|i| (neuron.wrapping_mul(2_654_435_761).rotate_left((i % 32) as u32) as u8) ^ (i as u8)).collect()
}

fn spec(s: &str) -> PolicySpec {
    s.parse().unwrap()
}

/// The policies as their documentation states them, on sets and maps, with linear scans.
struct Reference {
    spec: PolicySpec,
    cap: usize,
    pinned: HashSet<u32>,
    cached: HashSet<u32>,
    last_active: HashMap<u32, u64>,
    /// Sequence number of the last touch: hits at `begin` in ascending order, then inserts in call order.
    touch: HashMap<u32, u64>,
    freq: HashMap<u32, u32>,
    now: u64,
    seq: u64,
}

impl Reference {
    fn new(spec: PolicySpec, n: usize, cap: usize, hot: &[u32]) -> Reference {
        let cap = if spec == PolicySpec::None { 0 } else { cap.min(n) };
        let pinned: HashSet<u32> = match spec {
            PolicySpec::All => (0..n as u32).collect(),
            PolicySpec::Hot { fraction, .. } => hot[..(fraction * n as f64).round() as usize].iter().copied().collect(),
            _ => HashSet::new(),
        };
        Reference {
            spec,
            cap,
            pinned,
            cached: HashSet::new(),
            last_active: HashMap::new(),
            touch: HashMap::new(),
            freq: HashMap::new(),
            now: 0,
            seq: 0,
        }
    }

    fn begin(&mut self, active: &[u32]) -> Vec<u32> {
        self.now += 1;
        let mut missing = Vec::new();
        for &a in active {
            self.last_active.insert(a, self.now);
            *self.freq.entry(a).or_default() += 1;
            if self.cached.contains(&a) {
                self.seq += 1;
                self.touch.insert(a, self.seq);
            } else {
                missing.push(a);
            }
        }
        missing
    }

    fn evictable(&self) -> impl Iterator<Item = u32> + '_ {
        self.cached.iter().copied().filter(|n| !self.pinned.contains(n) && self.last_active[n] != self.now)
    }

    /// `None` when declined, else `Some(victim)`.
    fn insert(&mut self, n: u32) -> Option<Option<u32>> {
        if self.cached.contains(&n) {
            return Some(None);
        }
        if self.pinned.contains(&n) {
            self.cached.insert(n);
            return Some(None);
        }
        let dynamic = self.cached.iter().filter(|n| !self.pinned.contains(n)).count();
        let room = dynamic < self.cap - self.pinned.len();
        let victim = match self.spec {
            PolicySpec::None | PolicySpec::All | PolicySpec::Hot { window: None, .. } => return None,
            PolicySpec::Window(_) | PolicySpec::Lru | PolicySpec::Hot { window: Some(_), .. } => {
                self.evictable().min_by_key(|v| self.touch[v])
            }
            PolicySpec::Lfu => {
                self.evictable().min_by_key(|v| (self.freq[v], self.touch[v])).filter(|v| self.freq[v] < self.freq[&n])
            }
        };
        let victim = if room {
            None
        } else {
            let v = victim?;
            self.cached.remove(&v);
            Some(v)
        };
        self.cached.insert(n);
        self.seq += 1;
        self.touch.insert(n, self.seq);
        Some(victim)
    }

    fn end(&mut self) {
        if let Some(k) = self.spec.window() {
            let now = self.now;
            let (pinned, last) = (&self.pinned, &self.last_active);
            self.cached.retain(|n| pinned.contains(n) || last[n] + u64::from(k) > now);
        }
    }
}

fn cached_set(c: &LayerCache) -> BTreeSet<u32> {
    c.neurons().iter().copied().collect()
}

fn check_rows(c: &LayerCache) {
    let rb = c.record_bytes();
    for (n, s) in c.iter() {
        assert_eq!(c.slot_of(n), Some(s));
        assert_eq!(c.row(s), &record(n, rb)[..], "row of neuron {n} in slot {s}");
        assert_eq!(&c.rows()[s as usize * rb..(s as usize + 1) * rb], c.row(s));
    }
}

/// Runs `tokens` tokens through a cache and the reference, comparing every insert's outcome and the cached set
/// after every insert and every token; checks rows and slot stability. Returns the cache's stats.
fn run_against_reference(
    policy: &str,
    n: usize,
    cap: usize,
    active: usize,
    churn: f64,
    tokens: usize,
    seed: u64,
) -> CacheStats {
    let rb = 24;
    let mut stream = SyntheticActivity::new(n, active, churn, seed);
    let hot = stream.popularity_order().to_vec();
    let spec = spec(policy);
    let mut cache = LayerCache::new(spec, n, rb, cap, Some(&hot)).unwrap();
    let mut reference = Reference::new(spec, n, cap, &hot);
    let mut missing = Vec::with_capacity(n);
    for t in 0..tokens {
        let act = stream.next_token().to_vec();
        cache.begin_token(&act, &mut missing);
        assert_eq!(missing, reference.begin(&act), "{policy} token {t}: missing");
        let mut slots = Vec::new();
        for &m in &missing {
            let before = cache.neurons().to_vec();
            let got = cache.insert(m, &record(m, rb));
            // The victim, if any, is the neuron whose slot the new one took.
            let outcome = got.map(|s| if before.len() == cache.len() { Some(before[s as usize]) } else { None });
            assert_eq!(outcome, reference.insert(m), "{policy} token {t}: insert {m} (stored, victim)");
            if let Some(s) = got {
                slots.push((m, s));
            }
        }
        assert_eq!(cached_set(&cache), reference.cached.iter().copied().collect(), "{policy} token {t}");
        // No row moves within a token; no neuron active in this token was evicted.
        for &(m, s) in &slots {
            assert_eq!(cache.slot_of(m), Some(s), "{policy} token {t}: slot of {m} moved");
        }
        for &a in &act {
            if missing.binary_search(&a).is_err() {
                assert!(cache.contains(a), "{policy} token {t}: active neuron {a} was evicted");
            }
        }
        check_rows(&cache);
        cache.end_token();
        reference.end();
        assert_eq!(cached_set(&cache), reference.cached.iter().copied().collect(), "{policy} token {t}: end");
        assert!(cache.len() <= cache.capacity());
        check_rows(&cache);
    }
    cache.stats()
}

#[test]
fn every_policy_matches_the_reference_model() {
    // Capacities below, near and above the per-token active set (60 of 200) and the window's union.
    for policy in ["window:0", "window:1", "window:3", "lru", "lfu", "hot:0.2+window:2", "hot:0.3", "none", "all"] {
        for cap in [0, 40, 61, 90, 150, 200, 260] {
            if (policy == "all" && cap < 200) || (policy.starts_with("hot:0.2") && cap < 40) {
                continue;
            }
            if policy.starts_with("hot:0.3") && cap < 60 {
                continue;
            }
            let s = run_against_reference(policy, 200, cap, 60, 0.3, 300, SEED_REFERENCE);
            assert_eq!(s.hits + s.misses, 300 * 60, "{policy} cap {cap}");
            assert_eq!(s.inserts + s.declined, s.misses, "{policy} cap {cap}");
            assert_eq!(s.rows, s.inserts + s.prefilled - s.evictions, "{policy} cap {cap}");
        }
    }
}

#[test]
fn window_keeps_the_union_of_the_last_k_active_sets() {
    for k in [0u32, 1, 2, 5] {
        let n = 300;
        let mut stream = SyntheticActivity::new(n, 90, 0.3, SEED_WINDOW);
        let mut cache = LayerCache::new(PolicySpec::Window(k), n, 8, n, None).unwrap();
        let mut last: VecDeque<Vec<u32>> = VecDeque::new();
        let mut missing = Vec::new();
        let (mut loaded, mut hits) = (0u64, 0u64);
        for t in 0..200 {
            let act = stream.next_token().to_vec();
            cache.begin_token(&act, &mut missing);
            // The misses are exactly the active neurons outside the previous window.
            let window: BTreeSet<u32> = last.iter().flatten().copied().collect();
            let expect: Vec<u32> = act.iter().copied().filter(|a| !window.contains(a)).collect();
            assert_eq!(missing, expect, "window:{k} token {t}");
            for &m in &missing {
                assert!(cache.insert(m, &record(m, 8)).is_some(), "capacity n never declines");
            }
            cache.end_token();
            last.push_back(act);
            if last.len() > k as usize {
                last.pop_front();
            }
            let union: BTreeSet<u32> = last.iter().flatten().copied().collect();
            assert_eq!(cached_set(&cache), union, "window:{k} token {t}");
            loaded += missing.len() as u64;
            hits += (90 - missing.len()) as u64;
        }
        let s = cache.stats();
        assert_eq!((s.misses, s.hits, s.declined), (loaded, hits, 0));
        if k == 0 {
            assert_eq!(s.hits, 0);
            assert!(cache.is_empty());
        } else {
            // The stream's reuse makes the window pay off: at least the kept 70% of each token hit.
            assert!(s.hits >= 199 * 63, "window:{k}: {} hits", s.hits);
        }
    }
}

#[test]
fn window_beyond_capacity_replaces_the_least_recently_used() {
    // Capacity 100 < the window's union; the reference (checked in the run) replaces the oldest, and inserts
    // are declined only when every row belongs to the current token.
    let s = run_against_reference("window:4", 300, 100, 90, 0.3, 200, SEED_WINDOW);
    assert!(s.evictions > 0 && s.declined == 0);
    let s = run_against_reference("window:4", 300, 50, 90, 0.3, 50, SEED_WINDOW);
    assert!(s.declined > 0);
}

#[test]
fn rows_hold_their_neurons_bytes_after_any_swaps_and_evictions() {
    // Large records, small window: many deletions move rows.
    for policy in ["window:1", "window:2", "lru", "lfu", "hot:0.1+window:1"] {
        let n = 500;
        let rb = 1080;
        let mut stream = SyntheticActivity::new(n, 200, 0.5, SEED_ROWS);
        let hot = stream.popularity_order().to_vec();
        let mut cache = LayerCache::new(spec(policy), n, rb, 450, Some(&hot)).unwrap();
        let mut missing = Vec::new();
        for _ in 0..100 {
            let act = stream.next_token().to_vec();
            cache.begin_token(&act, &mut missing);
            for &m in &missing {
                cache.insert(m, &record(m, rb));
            }
            check_rows(&cache);
            cache.end_token();
            check_rows(&cache);
        }
        let s = cache.stats();
        if policy.contains("window") {
            assert!(s.rows_moved > 100, "{policy}: only {} rows moved", s.rows_moved);
        } else {
            assert_eq!(s.rows_moved, 0, "{policy} replaces in place");
        }
        assert_eq!(s.bytes_copied, (s.inserts + s.rows_moved) * rb as u64);
    }
}

#[test]
fn nothing_is_reallocated_over_a_long_random_run() {
    for policy in ["none", "all", "window:5", "window:0", "lru", "lfu", "hot:0.25", "hot:0.25+window:3"] {
        let n = 1536;
        let mut stream = SyntheticActivity::new(n, 614, 0.3, SEED_REALLOC);
        let hot = stream.popularity_order().to_vec();
        let mut cache =
            LayerCache::new(spec(policy), n, 64, if policy == "all" { n } else { 700 }, Some(&hot)).unwrap();
        cache
            .fill_all(|neuron, row| {
                row.copy_from_slice(&record(neuron, 64));
                Ok(())
            })
            .unwrap();
        let buffers = cache.buffers();
        assert_eq!(cache.bytes(), buffers.iter().map(|b| b.2 as u64).sum::<u64>());
        assert_eq!(cache.bytes(), LayerCache::footprint(&spec(policy), n, 64, cache.capacity()));
        let mut missing = Vec::with_capacity(n);
        let missing_buf = (missing.as_ptr(), missing.capacity());
        let staging: Vec<Vec<u8>> = (0..n as u32).map(|i| record(i, 64)).collect();
        for _ in 0..2000 {
            let act = stream.next_token().to_vec();
            cache.begin_token(&act, &mut missing);
            for &m in &missing {
                cache.insert(m, &staging[m as usize]);
            }
            cache.end_token();
            assert_eq!(cache.buffers(), buffers, "{policy}: a buffer was reallocated");
            assert_eq!((missing.as_ptr(), missing.capacity()), missing_buf);
        }
        check_rows(&cache);
    }
}

#[test]
fn memory_stays_within_budget_for_every_policy() {
    let (layers, n, rb) = (6usize, 1536usize, 1080usize);
    let resident = 3_000_000u64;
    let model_bytes = resident + (layers * n * rb) as u64;
    let staging: Vec<Vec<u8>> = (0..n as u32).map(|i| record(i, rb)).collect();
    for policy in ["none", "all", "window:5", "window:0", "lru", "lfu", "hot:0.3", "hot:0.2+window:5"] {
        let spec = spec(policy);
        let budget = if policy == "all" { Budget::Percent(110.0) } else { "55%".parse().unwrap() };
        let budget = budget.resolve(model_bytes);
        let slots = slots_per_layer(budget, resident, &spec, layers, n, rb).unwrap();
        let mut streams: Vec<_> =
            (0..layers as u64).map(|l| SyntheticActivity::new(n, 614, 0.3, SEED_BUDGET + l)).collect();
        let hot = streams[0].popularity_order().to_vec();
        let mut caches: Vec<_> =
            (0..layers).map(|_| LayerCache::new(spec, n, rb, slots, Some(&hot)).unwrap()).collect();
        let mut missing = Vec::with_capacity(n);
        for _ in 0..500 {
            for (cache, stream) in caches.iter_mut().zip(&mut streams) {
                let act = stream.next_token();
                cache.begin_token(act, &mut missing);
                for &m in &missing {
                    cache.insert(m, &staging[m as usize]);
                }
                cache.end_token();
                assert!(cache.len() <= cache.capacity());
            }
            let total: CacheStats = caches.iter().map(|c| c.stats()).sum();
            let dram = resident + total.bytes();
            assert!(dram <= budget, "{policy}: {dram} bytes in DRAM, budget {budget}");
            assert_eq!(
                total.bytes(),
                caches.iter().map(|c| c.buffers().iter().map(|b| b.2 as u64).sum::<u64>()).sum::<u64>()
            );
        }
        let total: CacheStats = caches.iter().map(|c| c.stats()).sum();
        match policy {
            "none" => assert_eq!((total.rows, total.hits), (0, 0)),
            "all" => assert_eq!(total.rows, (layers * n) as u64),
            // The dynamic policies use the rows the budget gives them.
            _ if policy != "window:0" && policy != "hot:0.3" => {
                assert!(total.rows as f64 > 0.9 * total.capacity as f64, "{policy}: {total:?}")
            }
            _ => {}
        }
    }
}

#[test]
fn none_caches_nothing_and_all_never_misses_after_fill() {
    let n = 400;
    let mut stream = SyntheticActivity::new(n, 150, 0.3, SEED_REFERENCE);
    let mut none = LayerCache::new(PolicySpec::None, n, 16, 400, None).unwrap();
    let mut all = LayerCache::new(PolicySpec::All, n, 16, 400, None).unwrap();
    assert_eq!(none.capacity(), 0);
    assert_eq!(none.bytes(), LayerCache::footprint(&PolicySpec::None, n, 16, 400));
    let mut reads = 0;
    all.fill_all(|neuron, row| {
        reads += 1;
        row.copy_from_slice(&record(neuron, 16));
        Ok(())
    })
    .unwrap();
    assert_eq!((reads, all.len()), (n, n));
    let mut missing = Vec::new();
    for _ in 0..100 {
        let act = stream.next_token().to_vec();
        none.begin_token(&act, &mut missing);
        assert_eq!(missing, act, "none reads every active neuron");
        for &m in &missing {
            assert_eq!(none.insert(m, &record(m, 16)), None);
        }
        none.end_token();
        assert!(none.is_empty());
        all.begin_token(&act, &mut missing);
        assert!(missing.is_empty());
        all.end_token();
    }
    check_rows(&all);
    let s = all.stats();
    assert_eq!((s.misses, s.hits, s.prefilled, s.inserts), (0, 100 * 150, n as u64, 0));
    let s = none.stats();
    assert_eq!((s.misses, s.declined, s.inserts), (100 * 150, 100 * 150, 0));
}

#[test]
fn hot_keeps_exactly_the_pinned_set() {
    let n = 400;
    let mut stream = SyntheticActivity::new(n, 150, 0.3, SEED_REFERENCE);
    let hot = stream.popularity_order().to_vec();
    let pinned: BTreeSet<u32> = hot[..100].iter().copied().collect();
    // Prefilled: the pinned set from the start, and only its neurons hit.
    let mut cache = LayerCache::new(spec("hot:0.25"), n, 16, 300, Some(&hot)).unwrap();
    assert_eq!(cache.pinned(), &hot[..100]);
    assert_eq!(cache.capacity(), 100, "hot:F without a window allocates only the pinned rows");
    cache
        .fill_all(|neuron, row| {
            row.copy_from_slice(&record(neuron, 16));
            Ok(())
        })
        .unwrap();
    let mut missing = Vec::new();
    for _ in 0..100 {
        let act = stream.next_token().to_vec();
        cache.begin_token(&act, &mut missing);
        let expect: Vec<u32> = act.iter().copied().filter(|a| !pinned.contains(a)).collect();
        assert_eq!(missing, expect);
        for &m in &missing {
            assert_eq!(cache.insert(m, &record(m, 16)), None);
        }
        cache.end_token();
        assert_eq!(cached_set(&cache), pinned);
    }
    check_rows(&cache);
    // With the window, the pinned set stays whatever the window does.
    let mut cache = LayerCache::new(spec("hot:0.25+window:1"), n, 16, 150, Some(&hot)).unwrap();
    cache
        .fill_all(|neuron, row| {
            row.copy_from_slice(&record(neuron, 16));
            Ok(())
        })
        .unwrap();
    for _ in 0..100 {
        let act = stream.next_token().to_vec();
        cache.begin_token(&act, &mut missing);
        for &m in &missing {
            cache.insert(m, &record(m, 16));
        }
        cache.end_token();
        assert!(pinned.is_subset(&cached_set(&cache)));
    }
    check_rows(&cache);
}

#[test]
fn lfu_keeps_the_most_frequent_neurons() {
    // A stationary stream: after a while, the cache holds (nearly) the neurons with the highest counts.
    let n = 400;
    let mut stream = SyntheticActivity::new(n, 100, 0.5, SEED_REFERENCE);
    let mut cache = LayerCache::new(PolicySpec::Lfu, n, 8, 80, None).unwrap();
    let mut count = vec![0u32; n];
    let mut missing = Vec::new();
    for _ in 0..2000 {
        let act = stream.next_token().to_vec();
        for &a in &act {
            count[a as usize] += 1;
        }
        cache.begin_token(&act, &mut missing);
        for &m in &missing {
            cache.insert(m, &record(m, 8));
        }
        cache.end_token();
    }
    let mut by_count: Vec<u32> = (0..n as u32).collect();
    by_count.sort_by_key(|&i| std::cmp::Reverse(count[i as usize]));
    let top: BTreeSet<u32> = by_count[..80].iter().copied().collect();
    let overlap = cached_set(&cache).intersection(&top).count();
    assert!(overlap >= 72, "lfu holds {overlap} of the 80 most frequent neurons");
}

#[test]
fn bad_arguments_are_errors() {
    let err = |r: spike_flash::Result<LayerCache>| r.unwrap_err().to_string();
    assert!(err(LayerCache::new(PolicySpec::All, 10, 8, 9, None)).contains("needs a slot for each of the layer's 10"));
    assert!(err(LayerCache::new(spec("hot:0.5"), 10, 8, 10, None)).contains("needs a hot list"));
    assert!(err(LayerCache::new(spec("hot:0.5"), 10, 8, 10, Some(&[1, 2]))).contains("the hot list has 2"));
    assert!(err(LayerCache::new(spec("hot:0.2"), 10, 8, 10, Some(&[1, 1]))).contains("neuron 1 appears twice"));
    assert!(err(LayerCache::new(spec("hot:0.2"), 10, 8, 10, Some(&[1, 10]))).contains("neuron 10 is out of range"));
    assert!(err(LayerCache::new(spec("hot:0.5+window:2"), 10, 8, 4, Some(&[0, 1, 2, 3, 4]))).contains("4 slots"));
    assert!(err(LayerCache::new(PolicySpec::Lru, 10, 0, 4, None)).contains("0 bytes"));
    // A fill that fails keeps what it filled and reports the error.
    let mut all = LayerCache::new(PolicySpec::All, 10, 8, 10, None).unwrap();
    let e = all
        .fill_all(|n, row| {
            if n == 4 {
                return Err(spike_flash::Error::Invalid("read failed".into()));
            }
            row.copy_from_slice(&record(n, 8));
            Ok(())
        })
        .unwrap_err();
    assert!(e.to_string().contains("read failed"));
    assert_eq!(all.neurons(), &[0, 1, 2, 3]);
    check_rows(&all);
}

#[test]
#[should_panic(expected = "not strictly ascending")]
fn unsorted_active_sets_are_refused() {
    let mut c = LayerCache::new(PolicySpec::Lru, 10, 8, 4, None).unwrap();
    c.begin_token(&[3, 2], &mut Vec::new());
}

#[test]
#[should_panic(expected = "not active in this token")]
fn inserting_an_inactive_neuron_is_refused() {
    let mut c = LayerCache::new(PolicySpec::Lru, 10, 8, 4, None).unwrap();
    c.begin_token(&[3], &mut Vec::new());
    c.insert(4, &[0; 8]);
}
