//! The paper's numbers that charts and the report set ours beside: `experiments/paper/claims.csv`, compiled in,
//! one row per number with the quantity, its unit, the model and where the paper gives it.

use std::path::PathBuf;

use crate::{Error, Result};

/// The claims file as compiled in, and the path it is named by in messages.
const CLAIMS: &str = include_str!("../paper/claims.csv");
const CLAIMS_PATH: &str = "experiments/paper/claims.csv";

/// One number of the paper.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Claim {
    /// A short name the code looks it up by (`window_held_k5`).
    pub id: String,
    /// What part of the paper it belongs to (windowing, bundling, predictor).
    pub topic: String,
    /// What it measures.
    pub quantity: String,
    pub value: f64,
    /// `share` (a fraction, shown as %), `ratio`, `GB/s`, `rank`.
    pub unit: String,
    /// The model (and hardware) the paper measured it on.
    pub model: String,
    /// Where the paper gives it.
    pub source: String,
}

impl Claim {
    /// The claim that `num`'s value over `den`'s is, for `quantity`: a ratio the paper implies by giving both
    /// (its source names the two).
    pub fn ratio(num: &Claim, den: &Claim, quantity: &str) -> Claim {
        Claim {
            id: format!("{}_over_{}", num.id, den.id),
            topic: num.topic.clone(),
            quantity: quantity.to_string(),
            value: num.value / den.value,
            unit: "ratio".into(),
            model: num.model.clone(),
            source: format!("{} over {} ({})", num.id, den.id, num.source),
        }
    }
}

/// Every claim of `text` (CSV with a header), read as `path` names it in errors.
pub fn parse(text: &str, path: &str) -> Result<Vec<Claim>> {
    let bad = |what: String| Error::Csv { path: PathBuf::from(path), what };
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let claims: Vec<Claim> = r.deserialize().collect::<std::result::Result<_, _>>().map_err(|e| bad(e.to_string()))?;
    for (i, c) in claims.iter().enumerate() {
        if !c.value.is_finite() {
            return Err(bad(format!("line {}: claim `{}` has no finite value", i + 2, c.id)));
        }
        if claims[..i].iter().any(|d| d.id == c.id) {
            return Err(bad(format!("line {}: claim `{}` appears twice", i + 2, c.id)));
        }
    }
    Ok(claims)
}

/// The paper's claims.
pub fn claims() -> Result<Vec<Claim>> {
    parse(CLAIMS, CLAIMS_PATH)
}

/// The claim named `id`.
pub fn claim(id: &str) -> Result<Claim> {
    claims()?
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| Error::Csv { path: PathBuf::from(CLAIMS_PATH), what: format!("no claim `{id}`") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_claims_parse() {
        let c = claims().unwrap();
        assert!(c.len() >= 10);
        assert_eq!(claim("window_held_k5").unwrap().value, 0.24);
        assert!(claim("nothing").unwrap_err().to_string().contains("claims.csv"));
        let r = Claim::ratio(&claim("throughput_bundled").unwrap(), &claim("throughput_split").unwrap(), "q");
        assert_eq!(r.value, 2.25 / 1.25);
        assert!(r.source.contains("throughput_bundled over throughput_split"));
    }

    #[test]
    fn a_bad_claim_names_the_file_and_line() {
        let head = "id,topic,quantity,value,unit,model,source\n";
        let e = parse(&format!("{head}a,t,q,1,share,m,s\nb,t,q,many,share,m,s\n"), "c.csv").unwrap_err().to_string();
        assert!(e.contains("c.csv") && e.contains("line: 3"), "{e}");
        let e = parse(&format!("{head}a,t,q,1,share,m,s\na,t,q,2,share,m,s\n"), "c.csv").unwrap_err().to_string();
        assert!(e.contains("c.csv") && e.contains("line 3") && e.contains("twice"), "{e}");
    }
}
