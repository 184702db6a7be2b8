//! [`PolicySpec`]: which neurons a [`LayerCache`](super::LayerCache) keeps, as written on a command line.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// A neuron-cache policy. The text form (`FromStr` / `Display`, which round-trip) is one of:
///
/// | text | keeps |
/// |---|---|
/// | `none` | nothing: every needed neuron is read every token (the naive baseline). No rows are allocated. |
/// | `all` | every neuron of the layer (the all-resident upper bound); needs a slot per neuron. |
/// | `window:K` | the neurons active in the last `K` tokens of this layer, the current one included (the paper's window); `K = 0` keeps nothing beyond the current token. When they outnumber the slots, a new neuron replaces the least recently used one (LRU within the window). |
/// | `lru` | as many as fit; a full cache replaces the least recently used neuron. |
/// | `lfu` | as many as fit; a full cache replaces its least frequently active neuron, and only for a neuron active more often. |
/// | `hot:F` | a static pinned set: the fraction `F` (0..=1) of the layer's neurons that a trace found most often active; nothing else. With every neuron requested each token this is the paper's hybrid mode. |
/// | `hot:F+window:K` | the pinned set, plus `window:K` over the other neurons in the remaining slots. |
///
/// Recency and frequency count tokens of one layer's cache: a neuron's frequency is the number of tokens it was
/// active in since the cache was built, cached or not. Recency orders touches: at `begin_token` the cached
/// active neurons in ascending order, then the inserts in call order; `lfu` breaks frequency ties by recency.
/// No policy evicts a neuron active in the current token: when that is the only way to make room, the new
/// neuron is declined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicySpec {
    /// Keep nothing.
    None,
    /// Keep every neuron.
    All,
    /// Keep the neurons active in the last `K` tokens.
    Window(u32),
    /// Least recently used replacement.
    Lru,
    /// Least frequently used replacement, admitting only more frequent neurons.
    Lfu,
    /// A pinned hot set of `fraction` of the layer's neurons, plus an optional window over the rest.
    Hot { fraction: f64, window: Option<u32> },
}

const EXPECTED: &str = "expected none, all, window:K, lru, lfu, hot:F or hot:F+window:K";

impl PolicySpec {
    /// The number of pinned neurons of a layer of `n_neurons`: `round(F * n)` for `hot:F`, all of them for
    /// `all`, none otherwise.
    pub fn pinned_count(&self, n_neurons: usize) -> usize {
        match *self {
            PolicySpec::All => n_neurons,
            PolicySpec::Hot { fraction, .. } => ((fraction * n_neurons as f64).round() as usize).min(n_neurons),
            _ => 0,
        }
    }

    /// The most row slots the policy can use in a layer of `n_neurons`: none for `none`, the pinned set for
    /// `hot:F` without a window, every neuron otherwise.
    pub fn max_slots(&self, n_neurons: usize) -> usize {
        match *self {
            PolicySpec::None => 0,
            PolicySpec::Hot { window: None, .. } => self.pinned_count(n_neurons),
            _ => n_neurons,
        }
    }

    /// Whether the policy needs a hot list (neurons by descending frequency) at construction.
    pub fn needs_hot_list(&self) -> bool {
        matches!(self, PolicySpec::Hot { .. })
    }

    /// The window length in tokens, for the policies that have one.
    pub fn window(&self) -> Option<u32> {
        match *self {
            PolicySpec::Window(k) => Some(k),
            PolicySpec::Hot { window, .. } => window,
            _ => None,
        }
    }
}

fn parse_window(text: &str, k: &str) -> Result<u32> {
    k.trim().parse::<u32>().map_err(|_| {
        Error::Invalid(format!("cache policy `{text}`: window:K needs K a whole number of tokens, got `{}`", k.trim()))
    })
}

fn parse_fraction(text: &str, f: &str) -> Result<f64> {
    match f.trim().parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(Error::Invalid(format!(
            "cache policy `{text}`: hot:F needs F a fraction of the layer's neurons between 0 and 1, got `{}`",
            f.trim()
        ))),
    }
}

impl FromStr for PolicySpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<PolicySpec> {
        let s = text.trim().to_ascii_lowercase();
        let unknown = || Error::Invalid(format!("unknown cache policy `{text}`: {EXPECTED}"));
        if let Some((a, b)) = s.split_once('+') {
            let (hot, win) = match (a.trim().split_once(':'), b.trim().split_once(':')) {
                (Some(("hot", f)), Some(("window", k))) | (Some(("window", k)), Some(("hot", f))) => (f, k),
                _ => {
                    return Err(Error::Invalid(format!(
                        "cache policy `{text}`: only a hot set and a window combine, as hot:F+window:K"
                    )))
                }
            };
            return Ok(PolicySpec::Hot {
                fraction: parse_fraction(text, hot)?,
                window: Some(parse_window(text, win)?),
            });
        }
        match s.split_once(':') {
            None => match s.as_str() {
                "none" => Ok(PolicySpec::None),
                "all" => Ok(PolicySpec::All),
                "lru" => Ok(PolicySpec::Lru),
                "lfu" => Ok(PolicySpec::Lfu),
                "window" => Err(Error::Invalid(format!("cache policy `{text}`: window needs a length, as window:K"))),
                "hot" => Err(Error::Invalid(format!("cache policy `{text}`: hot needs a fraction, as hot:F"))),
                _ => Err(unknown()),
            },
            Some(("window", k)) => Ok(PolicySpec::Window(parse_window(text, k)?)),
            Some(("hot", f)) => Ok(PolicySpec::Hot { fraction: parse_fraction(text, f)?, window: None }),
            Some(_) => Err(unknown()),
        }
    }
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PolicySpec::None => f.write_str("none"),
            PolicySpec::All => f.write_str("all"),
            PolicySpec::Window(k) => write!(f, "window:{k}"),
            PolicySpec::Lru => f.write_str("lru"),
            PolicySpec::Lfu => f.write_str("lfu"),
            PolicySpec::Hot { fraction, window: None } => write!(f, "hot:{fraction}"),
            PolicySpec::Hot { fraction, window: Some(k) } => write!(f, "hot:{fraction}+window:{k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let cases = [
            ("none", PolicySpec::None),
            ("all", PolicySpec::All),
            ("window:5", PolicySpec::Window(5)),
            ("window:0", PolicySpec::Window(0)),
            ("lru", PolicySpec::Lru),
            ("lfu", PolicySpec::Lfu),
            ("hot:0.25", PolicySpec::Hot { fraction: 0.25, window: None }),
            ("hot:1", PolicySpec::Hot { fraction: 1.0, window: None }),
            ("hot:0.1+window:3", PolicySpec::Hot { fraction: 0.1, window: Some(3) }),
        ];
        for (text, spec) in cases {
            assert_eq!(text.parse::<PolicySpec>().unwrap(), spec, "{text}");
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!(" Window:2 ".parse::<PolicySpec>().unwrap(), PolicySpec::Window(2));
        assert_eq!(
            "window:4+hot:0.5".parse::<PolicySpec>().unwrap(),
            PolicySpec::Hot { fraction: 0.5, window: Some(4) }
        );
    }

    #[test]
    fn rejects_with_clear_messages() {
        let err = |s: &str| s.parse::<PolicySpec>().unwrap_err().to_string();
        assert!(err("fifo").contains("unknown cache policy `fifo`"));
        assert!(err("fifo").contains("window:K"));
        assert!(err("window").contains("window:K"));
        assert!(err("window:-1").contains("whole number of tokens, got `-1`"));
        assert!(err("window:x").contains("got `x`"));
        assert!(err("hot").contains("hot:F"));
        assert!(err("hot:1.5").contains("between 0 and 1, got `1.5`"));
        assert!(err("hot:nan").contains("between 0 and 1"));
        assert!(err("lru+window:3").contains("hot:F+window:K"));
        assert!(err("hot:0.1+window:z").contains("got `z`"));
    }

    #[test]
    fn pinned_counts() {
        let hot = PolicySpec::Hot { fraction: 0.5, window: None };
        assert_eq!(hot.pinned_count(1536), 768);
        assert_eq!(PolicySpec::All.pinned_count(1536), 1536);
        assert_eq!(PolicySpec::Window(5).pinned_count(1536), 0);
        assert_eq!(PolicySpec::Hot { fraction: 1.0, window: Some(1) }.pinned_count(7), 7);
        assert_eq!(hot.max_slots(1536), 768);
        assert_eq!(PolicySpec::Hot { fraction: 0.5, window: Some(1) }.max_slots(1536), 1536);
        assert_eq!(PolicySpec::None.max_slots(1536), 0);
    }
}
