//! The DRAM budget: [`Budget`] as written on a command line, and [`slots_per_layer`], which splits what the
//! resident part leaves among the layers' caches.

use std::fmt;
use std::str::FromStr;

use super::{LayerCache, PolicySpec};
use crate::{Error, Result};

/// A DRAM budget for the model's memory: a percentage of a reference size (the model file), or bytes.
///
/// Text form (`FromStr` / `Display`): `65%`; or a number with an optional unit, `B`, decimal `KB` `MB` `GB`
/// `TB` or binary `KiB` `MiB` `GiB` `TiB` (case-insensitive), e.g. `64MiB`, `64MB`, `1.5GiB`, `100000`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Percent of the reference size.
    Percent(f64),
    /// Bytes.
    Bytes(u64),
}

const UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

impl Budget {
    /// The budget in bytes, for a model (reference size) of `model_bytes`.
    pub fn resolve(&self, model_bytes: u64) -> u64 {
        match *self {
            // Float to integer casts saturate; the percentage is finite and positive by construction.
            Budget::Percent(p) => (p / 100.0 * model_bytes as f64).floor() as u64,
            Budget::Bytes(b) => b,
        }
    }
}

impl FromStr for Budget {
    type Err = Error;

    fn from_str(text: &str) -> Result<Budget> {
        let s = text.trim();
        let bad = |why: &str| {
            Error::Invalid(format!(
                "DRAM budget `{text}`: {why}; expected a percentage of the model (65%) or a size (64MiB, 64MB, \
                 1.5GiB, bytes)"
            ))
        };
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(Budget::Percent(x)),
                _ => Err(bad("the percentage must be a positive number")),
            };
        }
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = (&s[..split], s[split..].trim().to_ascii_lowercase());
        let mult = if unit.is_empty() {
            1
        } else {
            UNITS.iter().find(|(u, _)| *u == unit).map(|&(_, m)| m).ok_or_else(|| bad("unknown unit"))?
        };
        if let Ok(n) = num.parse::<u64>() {
            return n.checked_mul(mult).map(Budget::Bytes).ok_or_else(|| bad("too large"));
        }
        match num.parse::<f64>() {
            Ok(x) if x.is_finite() => {
                let bytes = x * mult as f64;
                if bytes >= u64::MAX as f64 {
                    Err(bad("too large"))
                } else if bytes.fract() != 0.0 {
                    Err(bad("not a whole number of bytes"))
                } else {
                    Ok(Budget::Bytes(bytes as u64))
                }
            }
            _ => Err(bad("not a number")),
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Budget::Percent(p) => write!(f, "{p}%"),
            Budget::Bytes(b) => {
                for (name, m) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
                    if b > 0 && b % m == 0 {
                        return write!(f, "{}{name}", b / m);
                    }
                }
                write!(f, "{b}")
            }
        }
    }
}

/// The row slots per layer that a DRAM budget of `budget_bytes` leaves for `layers` caches of policy `spec`
/// (layers of `n_neurons` neurons, records of `record_bytes`), after `resident_bytes` that stay in DRAM anyway
/// (attention and embedding tensors, norms, the predictor, ...). Each layer's cache gets an equal share, and
/// its maps and policy state count against it: with the returned slots,
/// `resident_bytes + layers * LayerCache::footprint(spec, n_neurons, record_bytes, slots) <= budget_bytes`.
/// No more slots than the policy can use ([`PolicySpec::max_slots`]): `none` gets 0, `hot:F` its pinned set.
///
/// Errors, saying by how many bytes the budget falls short: a budget below the resident part; a budget that
/// cannot hold the policy's static set (every neuron for `all`, the hot set for `hot:F`) or the maps.
pub fn slots_per_layer(
    budget_bytes: u64,
    resident_bytes: u64,
    spec: &PolicySpec,
    layers: usize,
    n_neurons: usize,
    record_bytes: usize,
) -> Result<usize> {
    if layers == 0 {
        return Err(Error::Invalid("DRAM budget: a model without layers".into()));
    }
    if budget_bytes < resident_bytes {
        return Err(Error::Budget {
            budget: budget_bytes,
            needed: resident_bytes,
            what: format!("of the resident part ({resident_bytes} bytes) by {} bytes", resident_bytes - budget_bytes),
        });
    }
    let l = layers as u64;
    let min_slots = spec.pinned_count(n_neurons);
    let min_layer = LayerCache::footprint(spec, n_neurons, record_bytes, min_slots);
    let need = resident_bytes.saturating_add(min_layer.saturating_mul(l));
    if budget_bytes < need {
        return Err(Error::Budget {
            budget: budget_bytes,
            needed: need,
            what: format!(
                "by {} bytes of what cache policy `{spec}` needs: {resident_bytes} resident bytes + {layers} layers \
                 x {min_layer} bytes ({min_slots} rows of {record_bytes} bytes, maps and policy state)",
                need - budget_bytes
            ),
        });
    }
    let per_layer = (budget_bytes - resident_bytes) / l;
    let fixed = LayerCache::footprint(spec, n_neurons, record_bytes, 0);
    let per_slot = LayerCache::footprint(spec, n_neurons, record_bytes, 1) - fixed;
    if per_slot == 0 {
        return Ok(0);
    }
    // per_layer >= min_layer >= fixed: checked above.
    Ok(((per_layer - fixed) / per_slot).min(spec.max_slots(n_neurons) as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        let cases = [
            ("65%", Budget::Percent(65.0), 65_000),
            ("64MiB", Budget::Bytes(64 << 20), 64 << 20),
            ("64MB", Budget::Bytes(64_000_000), 64_000_000),
            ("64mb", Budget::Bytes(64_000_000), 64_000_000),
            ("1.5GiB", Budget::Bytes(3 << 29), 3 << 29),
            ("100000", Budget::Bytes(100_000), 100_000),
            ("512 B", Budget::Bytes(512), 512),
            ("2KiB", Budget::Bytes(2048), 2048),
        ];
        for (text, b, resolved) in cases {
            let parsed: Budget = text.parse().unwrap();
            assert_eq!(parsed, b, "{text}");
            assert_eq!(parsed.resolve(100_000), resolved, "{text}");
            assert_eq!(parsed.to_string().parse::<Budget>().unwrap(), b, "{text} round trip");
        }
        assert_eq!(Budget::Bytes(3 << 29).to_string(), "1536MiB");
        assert_eq!(Budget::Bytes(1000).to_string(), "1000");
        assert_eq!(Budget::Percent(12.5).to_string(), "12.5%");
        assert_eq!(Budget::Percent(150.0).resolve(98_362_432), 147_543_648);
    }

    #[test]
    fn rejects_with_clear_messages() {
        let err = |s: &str| s.parse::<Budget>().unwrap_err().to_string();
        assert!(err("-5%").contains("positive"));
        assert!(err("0%").contains("positive"));
        assert!(err("64M").contains("unknown unit"));
        assert!(err("64 parsecs").contains("unknown unit"));
        assert!(err("").contains("not a number"));
        assert!(err("1.2.3MB").contains("not a number"));
        assert!(err("0.3B").contains("whole number"));
        assert!(err("99999999999TiB").contains("too large"));
        assert!(err("x").contains("65%"));
    }

    #[test]
    fn shortfalls_are_reported_in_bytes() {
        let e = slots_per_layer(1000, 1500, &PolicySpec::Window(5), 30, 1536, 1080).unwrap_err().to_string();
        assert!(e.contains("falls short of the resident part (1500 bytes) by 500 bytes"), "{e}");
        let per_layer = LayerCache::footprint(&PolicySpec::All, 1536, 1080, 1536);
        let budget = 10_000 + 30 * per_layer - 7;
        let e = slots_per_layer(budget, 10_000, &PolicySpec::All, 30, 1536, 1080).unwrap_err().to_string();
        assert!(e.contains("falls short by 7 bytes"), "{e}");
        assert_eq!(slots_per_layer(budget + 7, 10_000, &PolicySpec::All, 30, 1536, 1080).unwrap(), 1536);
        assert_eq!(slots_per_layer(budget, 10_000, &PolicySpec::None, 30, 1536, 1080).unwrap(), 0);
    }

    #[test]
    fn slots_fill_the_budget_and_no_more() {
        for spec in ["window:5", "lru", "lfu", "hot:0.25+window:2", "hot:0.5"] {
            let spec: PolicySpec = spec.parse().unwrap();
            for budget in (20_000_000u64..60_000_000).step_by(3_333_331) {
                let slots = slots_per_layer(budget, 5_000_000, &spec, 30, 1536, 1080);
                let Ok(slots) = slots else { continue };
                let used = 5_000_000 + 30 * LayerCache::footprint(&spec, 1536, 1080, slots);
                assert!(used <= budget, "{spec} {budget}: {used}");
                if slots < spec.max_slots(1536) {
                    let more = 5_000_000 + 30 * LayerCache::footprint(&spec, 1536, 1080, slots + 1);
                    assert!(more > budget, "{spec} {budget}: one more slot would fit");
                }
            }
        }
    }
}
