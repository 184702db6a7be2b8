//! Per-layer neuron lists read from JSON: a neuron order for a conversion ([`ConvertOptions::order`]), a hot
//! list for the neuron cache (`hot:F`). What the lists must then hold (a permutation per layer, ids in range,
//! no repeats) is checked by their users: [`check_order`] for an order, the neuron cache for a hot list.
//!
//! The reader distrusts the file: it refuses a file over [`MAX_LIST_FILE`] bytes before reading it, and parses
//! straight into the lists (no intermediate JSON tree), stopping at [`MAX_LISTS`] lists, so what it allocates
//! is a small multiple of the file's length.
//!
//! [`ConvertOptions::order`]: super::ConvertOptions::order
//! [`check_order`]: super::check_order

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::{Error, Result};

/// The largest neuron list file read, in bytes (128 MiB). The lists of the largest models in use (126 layers of
/// 53,248 neurons) take about 60 MB written one id per line, indented.
pub const MAX_LIST_FILE: u64 = 128 << 20;

/// The most lists (layers) a file may hold: the largest layer count a model configuration allows.
pub const MAX_LISTS: usize = 1 << 20;

/// What a neuron list file holds, in any of its three shapes.
struct ListsFile(Vec<Vec<u32>>);

/// Expected: the three shapes.
const SHAPES: &str = "an array of per-layer neuron id arrays, an object holding one under \"order\", or a hot-neuron \
                      file of `spike trace-stats` ({\"layers\": [{\"neurons\": [...]}, ...]})";

impl<'de> Deserialize<'de> for ListsFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<ListsFile, D::Error> {
        d.deserialize_any(FileVisitor)
    }
}

struct FileVisitor;

impl<'de> Visitor<'de> for FileVisitor {
    type Value = ListsFile;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(SHAPES)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<ListsFile, A::Error> {
        ListsVisitor.visit_seq(seq).map(ListsFile)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<ListsFile, A::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Key {
            Order,
            Layers,
            #[serde(other)]
            Other,
        }
        let (mut order, mut layers) = (None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Order if order.is_some() => return Err(de::Error::duplicate_field("order")),
                Key::Layers if layers.is_some() => return Err(de::Error::duplicate_field("layers")),
                Key::Order => order = Some(map.next_value::<Lists>()?.0),
                Key::Layers => layers = Some(map.next_value::<HotLayers>()?.0),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match (order, layers) {
            (Some(o), _) => Ok(ListsFile(o)),
            (None, Some(l)) => Ok(ListsFile(l)),
            (None, None) => {
                Err(de::Error::custom(format_args!("an object without \"order\" or \"layers\": expected {SHAPES}")))
            }
        }
    }
}

/// An array of at most [`MAX_LISTS`] arrays of neuron ids.
struct Lists(Vec<Vec<u32>>);

impl<'de> Deserialize<'de> for Lists {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Lists, D::Error> {
        d.deserialize_seq(ListsVisitor).map(Lists)
    }
}

struct ListsVisitor;

impl<'de> Visitor<'de> for ListsVisitor {
    type Value = Vec<Vec<u32>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of per-layer arrays of neuron ids")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Vec<Vec<u32>>, A::Error> {
        lists_of(seq, |list: Vec<u32>| list)
    }
}

/// The elements of `seq`, each made a list by `list`; an error past [`MAX_LISTS`] of them.
fn lists_of<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
    mut seq: A,
    list: impl Fn(T) -> Vec<u32>,
) -> std::result::Result<Vec<Vec<u32>>, A::Error> {
    let mut out = Vec::new();
    while let Some(x) = seq.next_element::<T>()? {
        if out.len() == MAX_LISTS {
            return Err(de::Error::custom(format_args!("more than {MAX_LISTS} lists (layers)")));
        }
        out.push(list(x));
    }
    Ok(out)
}

/// `spike trace-stats`' hot-neuron file's `layers`: each layer's `neurons` (its other members ignored).
struct HotLayers(Vec<Vec<u32>>);

impl<'de> Deserialize<'de> for HotLayers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<HotLayers, D::Error> {
        #[derive(Deserialize)]
        struct HotLayer {
            neurons: Vec<u32>,
        }
        struct LayersVisitor;
        impl<'de> Visitor<'de> for LayersVisitor {
            type Value = Vec<Vec<u32>>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of layers, each {\"neurons\": [...]}")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Vec<Vec<u32>>, A::Error> {
                lists_of(seq, |layer: HotLayer| layer.neurons)
            }
        }
        d.deserialize_seq(LayersVisitor).map(HotLayers)
    }
}

/// Reads a per-layer list of neuron ids (a neuron order for [`ConvertOptions::order`], a hot list for the
/// neuron cache): `[[...], ...]`, `{"order": [[...], ...]}`, or a hot-neuron file of `spike trace-stats`
/// (`{"layers": [{"neurons": [...]}, ...]}`). A file over [`MAX_LIST_FILE`] bytes is refused unread.
///
/// [`ConvertOptions::order`]: super::ConvertOptions::order
pub fn read_neuron_lists(path: &Path) -> Result<Vec<Vec<u32>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let too_long = |len: u64| Error::Layout {
        path: path.to_path_buf(),
        what: format!("{len} bytes, more than the {MAX_LIST_FILE} bytes a neuron list file may have"),
    };
    if len > MAX_LIST_FILE {
        return Err(too_long(len));
    }
    // The file may grow meanwhile: read no more than the cap allows.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_LIST_FILE + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_LIST_FILE {
        return Err(too_long(bytes.len() as u64));
    }
    parse_neuron_lists(path, &bytes)
}

/// [`read_neuron_lists`] of a file's bytes; `path` names it in errors.
pub fn parse_neuron_lists(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<u32>>> {
    serde_json::from_slice::<ListsFile>(bytes).map(|f| f.0).map_err(|e| Error::json(path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Vec<u32>>> {
        parse_neuron_lists(Path::new("lists.json"), text.as_bytes())
    }

    #[test]
    fn the_three_shapes_read_the_same_lists() {
        let want = vec![vec![2, 0, 1], vec![1, 2, 0]];
        assert_eq!(parse("[[2, 0, 1], [1, 2, 0]]").unwrap(), want);
        assert_eq!(parse(r#"{"note": {"x": [1]}, "order": [[2, 0, 1], [1, 2, 0]]}"#).unwrap(), want);
        let hot = r#"{"layers": [{"layer": 0, "neurons": [2, 0, 1], "freq": [0.5]}, {"neurons": [1, 2, 0]}]}"#;
        assert_eq!(parse(hot).unwrap(), want);
        assert_eq!(parse("[]").unwrap(), Vec::<Vec<u32>>::new());
    }

    #[test]
    fn other_inputs_are_errors_naming_the_file_and_place() {
        for (text, says) in [
            ("[[1, -2]]", "invalid value"),
            ("[[1, 4294967296]]", "u32"),
            ("[[1.5]]", "invalid type"),
            ("[1, 2]", "invalid type"),
            (r#"{"x": 1}"#, "without \"order\" or \"layers\""),
            (r#"{"order": [[1]], "order": [[2]]}"#, "duplicate field `order`"),
            (r#"{"layers": [{"freq": 1}]}"#, "missing field `neurons`"),
            ("7", "expected an array of per-layer"),
            ("[[1], [2]", "EOF"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.starts_with("lists.json: invalid JSON at line 1, column"), "{text}: {e}");
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn a_file_over_the_cap_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.json");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_LIST_FILE + 1).unwrap();
        let e = read_neuron_lists(&p).unwrap_err().to_string();
        assert!(e.contains("big.json") && e.contains("more than the 134217728 bytes"), "{e}");
        std::fs::write(&p, "[[0, 1]]").unwrap();
        assert_eq!(read_neuron_lists(&p).unwrap(), vec![vec![0, 1]]);
    }
}
