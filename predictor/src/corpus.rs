//! Corpus text cut into documents: the units a trace keeps together (train/validation splits assign whole
//! documents, windows never cross one).

use std::str::FromStr;

/// Where one document ends and the next begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DocSplit {
    /// Two or more consecutive blank lines separate documents; single blank lines separate paragraphs of one
    /// document (the layout `scripts/corpus.sh` writes).
    #[default]
    Sections,
    /// Every blank line separates documents (each paragraph is a document).
    Paragraphs,
    /// Each input file is one document.
    File,
}

impl FromStr for DocSplit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sections" => Ok(DocSplit::Sections),
            "paragraphs" => Ok(DocSplit::Paragraphs),
            "file" => Ok(DocSplit::File),
            _ => Err(format!("`{s}` is not sections, paragraphs or file")),
        }
    }
}

/// The documents of `text` (trimmed, none empty), in order.
pub fn documents(text: &str, split: DocSplit) -> Vec<String> {
    let min_blank = match split {
        DocSplit::File => {
            let t = text.trim();
            return if t.is_empty() { Vec::new() } else { vec![t.to_string()] };
        }
        DocSplit::Sections => 2,
        DocSplit::Paragraphs => 1,
    };
    let mut docs = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    let mut blanks = 0usize;
    let mut flush = |cur: &mut Vec<&str>| {
        let doc = cur.join("\n");
        let doc = doc.trim();
        if !doc.is_empty() {
            docs.push(doc.to_string());
        }
        cur.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            blanks += 1;
            continue;
        }
        if blanks >= min_blank {
            flush(&mut cur);
        } else if blanks > 0 && !cur.is_empty() {
            cur.push("");
        }
        blanks = 0;
        cur.push(line);
    }
    flush(&mut cur);
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_keep_paragraphs_together_and_paragraphs_split_them() {
        let text = "a1\na2\n\nb1\n\n\n\nc1\n  \n\n\nd1\n";
        assert_eq!(documents(text, DocSplit::Sections), vec!["a1\na2\n\nb1", "c1", "d1"]);
        assert_eq!(documents(text, DocSplit::Paragraphs), vec!["a1\na2", "b1", "c1", "d1"]);
        assert_eq!(documents(text, DocSplit::File), vec![text.trim()]);
        assert!(documents(" \n\n", DocSplit::Sections).is_empty());
    }
}
