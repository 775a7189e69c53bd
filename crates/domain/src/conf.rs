//! Run parameters: the JSON object a run is triggered with.

use std::{
    fmt::{self, Write as _},
    ops::Range,
    sync::{Arc, LazyLock, OnceLock},
};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The parameters of a run: a JSON object of at most 16 KiB as compact
/// JSON, without the reserved top-level key `maestro`.
///
/// Key order carries no meaning: two confs are the same request when they
/// hold the same keys and values, whatever the order they were written in
/// ([`RunConf::fingerprint`]).
///
/// ```
/// use domain::{InvalidConf, RunConf};
/// use serde_json::json;
///
/// let conf = RunConf::parse(json!({"date": "2024-12-18", "full_refresh": true}))?;
/// assert_eq!(conf.as_map()["date"], "2024-12-18");
/// assert_eq!(conf.as_json(), r#"{"date":"2024-12-18","full_refresh":true}"#);
/// assert_eq!(RunConf::parse(serde_json::Value::Null)?, RunConf::default());
/// assert_eq!(RunConf::parse(json!(["a"])), Err(InvalidConf::NotAnObject { found: "an array" }));
/// assert_eq!(RunConf::parse(json!({"maestro": 1})), Err(InvalidConf::ReservedKey { key: "maestro" }));
/// # Ok::<(), InvalidConf>(())
/// ```
///
/// A conf is kept as its compact JSON text ([`RunConf::as_json`]), which
/// is what answers show; the object is parsed from it the first time an
/// adapter asks for it ([`RunConf::as_map`]), and kept.
///
/// Cheap to clone: a run's parameters are shared, not copied, by the runs,
/// events and answers that show them.
#[derive(Clone, Default)]
pub struct RunConf(Option<Arc<Shared>>);

/// A conf that holds at least one parameter.
struct Shared {
    /// The object as compact JSON. It may hold a little room beyond its
    /// length: see [`RunConf::of_json`].
    json: String,
    /// The object, parsed from `json` on first use.
    map: OnceLock<Map<String, Value>>,
}

/// What an empty conf shows.
static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

/// Why a value cannot be a run's parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidConf {
    /// The value is not a JSON object.
    #[error("the run parameters must be a JSON object, not {found}")]
    NotAnObject {
        /// What it is instead: "an array", "a string", ...
        found: &'static str,
    },
    /// The object is larger than [`RunConf::MAX_BYTES`] as compact JSON.
    #[error("the run parameters take {bytes} bytes as compact JSON, more than the {max} allowed")]
    TooLarge {
        /// Its size as compact JSON.
        bytes: usize,
        /// The most allowed.
        max: usize,
    },
    /// The object uses a top-level key that is reserved.
    #[error("the top-level key {key:?} of the run parameters is reserved")]
    ReservedKey {
        /// The reserved key.
        key: &'static str,
    },
}

impl RunConf {
    /// The largest conf accepted, as compact JSON: 16 KiB.
    pub const MAX_BYTES: usize = 16 * 1024;

    /// The top-level key kept for Maestro's own use (its audit block on
    /// engines that store the conf beside it).
    pub const RESERVED_KEY: &'static str = "maestro";

    /// Checks a value: `null` is the empty conf; an object is taken when it
    /// is small enough and does not use the reserved key.
    ///
    /// [`RunConfSeed`] checks the same while the JSON text is read, without
    /// building the value first.
    ///
    /// # Errors
    /// [`InvalidConf`] saying what is wrong.
    pub fn parse(value: Value) -> Result<Self, InvalidConf> {
        let map = match value {
            Value::Null => return Ok(Self::default()),
            Value::Object(map) => map,
            Value::Bool(_) => return Err(InvalidConf::NotAnObject { found: "a boolean" }),
            Value::Number(_) => return Err(InvalidConf::NotAnObject { found: "a number" }),
            Value::String(_) => return Err(InvalidConf::NotAnObject { found: "a string" }),
            Value::Array(_) => return Err(InvalidConf::NotAnObject { found: "an array" }),
        };
        if map.contains_key(Self::RESERVED_KEY) {
            return Err(InvalidConf::ReservedKey {
                key: Self::RESERVED_KEY,
            });
        }
        let json = compact(&map);
        if json.len() > Self::MAX_BYTES {
            return Err(InvalidConf::TooLarge {
                bytes: json.len(),
                max: Self::MAX_BYTES,
            });
        }
        Ok(Self::of(json, map))
    }

    /// `map`, whose compact JSON is `json`.
    fn of(json: String, map: Map<String, Value>) -> Self {
        if map.is_empty() {
            Self(None)
        } else {
            Self(Some(Arc::new(Shared {
                json: kept(json),
                map: OnceLock::from(map),
            })))
        }
    }

    /// The object whose compact JSON is `json`, parsed when first needed.
    fn of_json(json: String) -> Self {
        if json == "{}" {
            return Self(None);
        }
        Self(Some(Arc::new(Shared {
            json: kept(json),
            map: OnceLock::new(),
        })))
    }

    /// A conf an engine gave back, taken as it is: what Maestro reads back
    /// is not checked again (an engine may hold parameters set elsewhere),
    /// but Maestro's own block never shows.
    pub fn from_engine(mut map: Map<String, Value>) -> Self {
        map.remove(Self::RESERVED_KEY);
        Self::of(compact(&map), map)
    }

    /// The parameters.
    pub fn as_map(&self) -> &Map<String, Value> {
        match &self.0 {
            None => &EMPTY,
            Some(shared) => shared.map.get_or_init(|| object_of(&shared.json)),
        }
    }

    /// The parameters as compact JSON (`{}` when none): what answers show,
    /// written as it is.
    pub fn as_json(&self) -> &str {
        self.0.as_ref().map_or("{}", |shared| &shared.json)
    }

    /// The parameters, as the object they are (copied if shared).
    pub fn into_map(self) -> Map<String, Value> {
        match self.0.map(Arc::try_unwrap) {
            None => Map::new(),
            Some(Ok(Shared { json, map })) => map.into_inner().unwrap_or_else(|| object_of(&json)),
            Some(Err(shared)) => Self(Some(shared)).as_map().clone(),
        }
    }

    /// Whether no parameter is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The parameters as canonical JSON (keys sorted at every level, no
    /// spaces): equal for two confs that hold the same, whatever the order
    /// they were written in.
    pub fn fingerprint(&self) -> String {
        let mut out = String::new();
        write_canonical_map(&mut out, self.as_map());
        out
    }
}

/// `json` as a conf keeps it: with the room it was given beyond its length
/// when that is little (the rest of a request's body, as [`RunConfSeed`]
/// is given the body's length), since shrinking copies the whole text, on
/// every execute, to save a few bytes; much room (a conf sent with many
/// spaces) is given back.
fn kept(mut json: String) -> String {
    if json.capacity() - json.len() > json.len() / 4 {
        json.shrink_to_fit();
    }
    json
}

/// Two confs are equal when they hold the same keys and values, whatever
/// the order they were written in.
impl PartialEq for RunConf {
    fn eq(&self, other: &Self) -> bool {
        self.as_json() == other.as_json() || self.as_map() == other.as_map()
    }
}

impl Eq for RunConf {}

impl fmt::Debug for RunConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RunConf").field(&self.as_json()).finish()
    }
}

/// The compact JSON, as [`RunConf::as_json`].
impl fmt::Display for RunConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_json())
    }
}

/// `map` as compact JSON.
fn compact(map: &Map<String, Value>) -> String {
    // Writing a map of JSON values cannot fail.
    serde_json::to_string(map).unwrap_or_default()
}

/// The object whose compact JSON `json` is (written by this module).
fn object_of(json: &str) -> Map<String, Value> {
    serde_json::from_str(json).unwrap_or_default()
}

/// Reads a run's parameters straight out of a JSON document, in the pass
/// that reads the document, and checks them as [`RunConf::parse`] does:
/// `null` is the empty conf; anything but an object, the reserved key at
/// the top, or more than [`RunConf::MAX_BYTES`] as compact JSON is
/// [`InvalidConf`]. Nothing is built but the compact text the conf is
/// kept as, so a large conf costs about what reading its text costs.
///
/// A refused conf is still read to its end, so the rest of the document
/// reads on; the deserializer's own errors are only those of the JSON.
///
/// ```
/// use serde::de::DeserializeSeed;
/// use domain::{InvalidConf, RunConf, RunConfSeed};
///
/// let read = |text: &str| {
///     RunConfSeed::default().deserialize(&mut serde_json::Deserializer::from_str(text)).unwrap()
/// };
/// let conf = read(r#"{ "date": "2024-12-18", "tables": ["a", "b"] }"#)?;
/// assert_eq!(conf.as_json(), r#"{"date":"2024-12-18","tables":["a","b"]}"#);
/// assert_eq!(conf.as_map()["tables"][1], "b");
/// assert_eq!(read("null")?, RunConf::default());
/// assert_eq!(read("[1]"), Err(InvalidConf::NotAnObject { found: "an array" }));
/// # Ok::<(), InvalidConf>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RunConfSeed {
    /// The room the compact text is given at once.
    capacity: usize,
}

impl RunConfSeed {
    /// A seed that gives the compact text room for `bytes` at once: the
    /// length of the document is a good guess, as a conf is rarely much
    /// shorter, and never longer than [`RunConf::MAX_BYTES`] once taken.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            capacity: bytes.min(RunConf::MAX_BYTES + 1),
        }
    }
}

impl<'de> DeserializeSeed<'de> for RunConfSeed {
    type Value = Result<RunConf, InvalidConf>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RunConfSeed {
    type Value = Result<RunConf, InvalidConf>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("run parameters")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(RunConf::default()))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(RunConf::default()))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(InvalidConf::NotAnObject { found: "a boolean" }))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(InvalidConf::NotAnObject { found: "a number" }))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(InvalidConf::NotAnObject { found: "a number" }))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(InvalidConf::NotAnObject { found: "a number" }))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(InvalidConf::NotAnObject { found: "a string" }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Read as values, not skipped: what a value refuses (a number out
        // of range) is refused as when the conf is parsed first.
        while seq.next_element::<Value>()?.is_some() {}
        Ok(Err(InvalidConf::NotAnObject { found: "an array" }))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let mut writer = Compact {
            out: String::with_capacity(self.capacity),
            ..Compact::default()
        };
        writer.object(map, true)?;
        Ok(writer.finish())
    }
}

/// The compact JSON of a conf being read, and what reading it found.
#[derive(Default)]
struct Compact {
    /// The text so far.
    out: String,
    /// Where the keys of the objects being read are in `out`, innermost
    /// last.
    keys: Vec<Range<usize>>,
    /// Whether the reserved key is at the top.
    reserved: bool,
    /// Whether an object repeats a key.
    repeated_key: bool,
}

impl Compact {
    /// Writes an object, `top` when it is the conf itself.
    fn object<'de, A: MapAccess<'de>>(&mut self, mut map: A, top: bool) -> Result<(), A::Error> {
        self.out.push('{');
        let first_key = self.keys.len();
        loop {
            let before = self.out.len();
            if self.keys.len() > first_key {
                self.out.push(',');
            }
            if map.next_key_seed(Key { to: self, top })?.is_none() {
                self.out.truncate(before);
                break;
            }
            self.out.push(':');
            map.next_value_seed(Item(self))?;
        }
        self.out.push('}');
        // Sorted, a repeated key is next to itself. (Keys are written the
        // one way JSON text is written here, so equal keys are equal text.)
        let (out, keys) = (self.out.as_bytes(), &mut self.keys[first_key..]);
        if keys.len() > 1 {
            keys.sort_unstable_by(|a, b| out[a.clone()].cmp(&out[b.clone()]));
            if keys
                .windows(2)
                .any(|pair| out[pair[0].clone()] == out[pair[1].clone()])
            {
                self.repeated_key = true;
            }
        }
        self.keys.truncate(first_key);
        Ok(())
    }

    /// The conf read, checked.
    fn finish(self) -> Result<RunConf, InvalidConf> {
        if self.reserved {
            return Err(InvalidConf::ReservedKey {
                key: RunConf::RESERVED_KEY,
            });
        }
        let json = self.out;
        if self.repeated_key {
            // The last of a repeated key's values is the one kept, as when
            // the text is parsed: the size is that of what is kept.
            return RunConf::parse(Value::Object(object_of(&json)));
        }
        if json.len() > RunConf::MAX_BYTES {
            return Err(InvalidConf::TooLarge {
                bytes: json.len(),
                max: RunConf::MAX_BYTES,
            });
        }
        Ok(RunConf::of_json(json))
    }

    /// Writes a string read from the document as JSON: `escaped` when the
    /// document wrote it with escapes, which are written again as JSON
    /// writes them. A string JSON text holds without escapes needs none
    /// (it has no quote, backslash or control character), so it is copied
    /// as it is, once that is checked.
    fn string(&mut self, value: &str, escaped: bool) {
        if escaped {
            // Writing a string as JSON cannot fail.
            self.out
                .push_str(&serde_json::to_string(value).unwrap_or_default());
        } else {
            write_json_string(&mut self.out, value);
        }
    }

    /// Writes a number as JSON writes it.
    fn number(&mut self, value: Number) {
        // Writing to a string cannot fail.
        let _ = write!(self.out, "{value}");
    }
}

/// Writes `value` as a JSON string, byte for byte as serde_json writes
/// it: as it is, in quotes, when it needs no escape (ids, names, most
/// values), which is told much faster than serde_json escapes.
pub(crate) fn write_json_string(out: &mut String, value: &str) {
    if needs_no_escape(value) {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else {
        // Writing a string as JSON cannot fail.
        out.push_str(&serde_json::to_string(value).unwrap_or_default());
    }
}

/// Whether `text` is written in a JSON string as it is: without a quote,
/// a backslash or a control character. (Looked at sixteen bytes at a
/// time, which the compiler turns into vector instructions.)
fn needs_no_escape(text: &str) -> bool {
    let needs = |byte: u8| byte < 0x20 || byte == b'"' || byte == b'\\';
    let mut chunks = text.as_bytes().chunks_exact(16);
    chunks
        .by_ref()
        .all(|chunk| !chunk.iter().fold(false, |any, &byte| any | needs(byte)))
        && !chunks.remainder().iter().any(|&byte| needs(byte))
}

/// Writes an object's key, noting where it is.
struct Key<'a> {
    to: &'a mut Compact,
    top: bool,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<(), E> {
        self.key(key, false);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
        self.key(key, true);
        Ok(())
    }
}

impl Key<'_> {
    /// Writes `key`, `escaped` as [`Compact::string`] has it.
    fn key(self, key: &str, escaped: bool) {
        let start = self.to.out.len();
        self.to.string(key, escaped);
        let end = self.to.out.len();
        self.to.keys.push(start..end);
        if self.top && key == RunConf::RESERVED_KEY {
            self.to.reserved = true;
        }
    }
}

/// Writes a value inside the conf.
struct Item<'a>(&'a mut Compact);

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.out.push_str("null");
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        self.0.out.push_str(if value { "true" } else { "false" });
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.0.number(value.into());
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.0.number(value.into());
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        // As a parsed value writes it (`null` for what is not finite,
        // which JSON text cannot hold anyway).
        match Number::from_f64(value) {
            Some(number) => self.0.number(number),
            None => self.0.out.push_str("null"),
        }
        Ok(())
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<(), E> {
        self.0.string(value, false);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.0.string(value, true);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        out.out.push('[');
        let mut first = true;
        loop {
            let before = out.out.len();
            if !first {
                out.out.push(',');
            }
            if seq.next_element_seed(Item(out))?.is_none() {
                out.out.truncate(before);
                break;
            }
            first = false;
        }
        out.out.push(']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.object(map, false)
    }
}

fn write_canonical_map(out: &mut String, map: &Map<String, Value>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        write_canonical(out, &map[key]);
    }
    out.push('}');
}

fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => write_canonical_map(out, map),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::de::DeserializeSeed;
    use serde_json::json;

    use super::*;

    /// [`needs_no_escape`] a byte at a time.
    fn needs_no_escape_bytewise(text: &str) -> bool {
        !text
            .bytes()
            .any(|byte| byte < 0x20 || byte == b'"' || byte == b'\\')
    }

    #[test]
    fn a_string_needs_escaping_for_a_quote_a_backslash_or_a_control_at_any_place() {
        for clean in [
            "",
            "x",
            "warehouse.table_01",
            "é ✓ ~ \u{7f} \u{80} \u{ff}",
            &"x".repeat(1024),
        ] {
            assert!(needs_no_escape(clean), "{clean:?}");
        }
        for length in [1, 7, 8, 9, 15, 16, 17, 64, 1023] {
            for at in 0..length {
                for bad in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
                    let mut text: Vec<char> = std::iter::repeat_n('a', length).collect();
                    text[at] = bad;
                    let text: String = text.into_iter().collect();
                    assert!(!needs_no_escape(&text), "{text:?}");
                }
                // The bytes just past the ones it looks for do not count.
                let mut text: Vec<char> = std::iter::repeat_n('a', length).collect();
                text[at] = ' ';
                let text: String = text.into_iter().collect();
                assert!(needs_no_escape(&text), "{text:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn needing_no_escape_is_told_as_a_byte_at_a_time_would(text in any::<String>()) {
            prop_assert_eq!(needs_no_escape(&text), needs_no_escape_bytewise(&text));
        }

        #[test]
        fn needing_no_escape_is_told_for_near_misses(
            text in proptest::collection::vec(
                prop_oneof![Just(' '), Just('!'), Just('"'), Just('#'), Just('['), Just('\\'), Just(']'), Just('\u{1f}'), Just('\u{7f}'), Just('é')],
                0..40,
            ).prop_map(String::from_iter)
        ) {
            prop_assert_eq!(needs_no_escape(&text), needs_no_escape_bytewise(&text));
        }
    }

    #[test]
    fn null_is_the_empty_conf_and_an_object_is_kept_as_sent() {
        assert!(RunConf::parse(Value::Null).unwrap().is_empty());
        let conf = RunConf::parse(json!({"b": 1, "a": {"z": [1, 2], "y": null}})).unwrap();
        assert_eq!(conf.as_map().len(), 2);
        assert_eq!(conf.as_map()["a"]["z"], json!([1, 2]));
    }

    #[test]
    fn anything_but_an_object_is_refused_naming_what_it_is() {
        for (value, found) in [
            (json!(true), "a boolean"),
            (json!(3), "a number"),
            (json!("x"), "a string"),
            (json!([]), "an array"),
        ] {
            assert_eq!(
                RunConf::parse(value),
                Err(InvalidConf::NotAnObject { found })
            );
        }
    }

    #[test]
    fn the_reserved_key_is_refused_only_at_the_top() {
        assert_eq!(
            RunConf::parse(json!({"maestro": {}})),
            Err(InvalidConf::ReservedKey { key: "maestro" })
        );
        assert!(RunConf::parse(json!({"nested": {"maestro": 1}})).is_ok());
        assert!(RunConf::parse(json!({"Maestro": 1})).is_ok());
    }

    #[test]
    fn sixteen_kib_of_compact_json_is_the_most() {
        // `{"k":"…"}` is 8 bytes around the value.
        let fits = json!({"k": "x".repeat(RunConf::MAX_BYTES - 8)});
        assert!(RunConf::parse(fits).is_ok());
        let over = json!({"k": "x".repeat(RunConf::MAX_BYTES - 7)});
        assert_eq!(
            RunConf::parse(over),
            Err(InvalidConf::TooLarge {
                bytes: RunConf::MAX_BYTES + 1,
                max: RunConf::MAX_BYTES
            })
        );
    }

    #[test]
    fn the_fingerprint_ignores_key_order_at_every_level_but_not_values() {
        let a = RunConf::parse(json!({"x": 1, "y": {"p": [1, {"b": 2, "a": 1}], "q": "s"}}));
        let b = RunConf::parse(json!({"y": {"q": "s", "p": [1, {"a": 1, "b": 2}]}, "x": 1}));
        assert_eq!(a.unwrap().fingerprint(), b.unwrap().fingerprint());
        let c = RunConf::parse(json!({"x": 1, "y": {"p": [{"a": 1, "b": 2}, 1], "q": "s"}}));
        assert_ne!(c.unwrap().fingerprint(), RunConf::default().fingerprint());
        assert_eq!(RunConf::default().fingerprint(), "{}");
    }

    /// What [`RunConfSeed`] reads of `text`.
    fn read(text: &str) -> Result<RunConf, InvalidConf> {
        let mut json = serde_json::Deserializer::from_str(text);
        let conf = RunConfSeed::default().deserialize(&mut json).unwrap();
        json.end().unwrap();
        conf
    }

    #[test]
    fn the_seed_reads_the_compact_text_of_what_parse_takes() {
        for value in [
            json!({"b": 1, "a": {"z": [1, 2.5, -3, true, null], "y": {}}, "c": []}),
            json!({"s": "quote \" back \\ tab \t nl \n ctl \u{1} é ✓ 😀"}),
            json!({"nested": {"maestro": 1}, "Maestro": 2}),
            json!({"big": u64::MAX, "small": i64::MIN, "float": 1.0e300, "tiny": 5e-324}),
        ] {
            let text = serde_json::to_string_pretty(&value).unwrap();
            let (read, parsed) = (read(&text).unwrap(), RunConf::parse(value.clone()).unwrap());
            assert_eq!(read, parsed);
            // Keys written in order, as a parsed object writes them.
            assert_eq!(read.as_json(), parsed.as_json());
            assert_eq!(read.fingerprint(), parsed.fingerprint());
            assert_eq!(
                serde_json::from_str::<Value>(read.as_json()).unwrap(),
                value
            );
            assert_eq!(Value::Object(read.into_map()), value);
        }
        // Written compact in the order it came, as one pass writes it.
        let conf = read(r#" { "b" : [ 1 , "\u0041" ] , "a" : 1.50 } "#).unwrap();
        assert_eq!(conf.as_json(), r#"{"b":[1,"A"],"a":1.5}"#);
    }

    #[test]
    fn the_seed_escapes_what_needs_it_whatever_reads_the_strings() {
        // A parsed value lends its strings as they are, escapes read.
        let value = json!({"q\"k": "a \"quote\" and \\ and \u{1f}".repeat(3), "n": [0.5]});
        let conf = RunConfSeed::default().deserialize(&value).unwrap().unwrap();
        assert_eq!(conf, RunConf::parse(value.clone()).unwrap());
        assert_eq!(conf.as_json(), RunConf::parse(value).unwrap().as_json());
    }

    #[test]
    fn the_seed_refuses_what_parse_refuses() {
        assert_eq!(read("null"), Ok(RunConf::default()));
        assert_eq!(read("{}"), Ok(RunConf::default()));
        assert!(read("{}").unwrap().is_empty());
        for (text, found) in [
            ("true", "a boolean"),
            ("-3.5", "a number"),
            ("7", "a number"),
            (r#""x""#, "a string"),
            ("[[1], {}]", "an array"),
        ] {
            assert_eq!(read(text), Err(InvalidConf::NotAnObject { found }));
        }
        let reserved = Err(InvalidConf::ReservedKey { key: "maestro" });
        assert_eq!(read(r#"{"a": 1, "maestro": {}}"#), reserved);
        // The key as the text spells it after its escapes are read.
        assert_eq!(read(r#"{"maest\u0072o": 1}"#), reserved);
        assert!(read(r#"{"a": {"maestro": 1}, "Maestro": 1}"#).is_ok());
    }

    #[test]
    fn what_json_values_refuse_the_seed_refuses_too() {
        for text in [r#"{"a": 1e400}"#, "[1e400]", r#"{"a": [{"b": -1e999}]}"#] {
            let mut json = serde_json::Deserializer::from_str(text);
            assert!(
                RunConfSeed::default().deserialize(&mut json).is_err(),
                "{text}"
            );
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn the_seed_counts_the_compact_size_whatever_the_spacing() {
        let fits = format!(r#"{{ "k" :  "{}" }}"#, "x".repeat(RunConf::MAX_BYTES - 8));
        assert!(read(&fits).is_ok());
        // `\u0078` is one byte, `x`, once read.
        let escaped = format!(r#"{{"k":"{}"}}"#, "\\u0078".repeat(RunConf::MAX_BYTES - 8));
        assert_eq!(read(&escaped).unwrap().as_json().len(), RunConf::MAX_BYTES);
        let over = format!(r#"{{"k": "{}"}}"#, "x".repeat(RunConf::MAX_BYTES - 7));
        assert_eq!(
            read(&over),
            Err(InvalidConf::TooLarge {
                bytes: RunConf::MAX_BYTES + 1,
                max: RunConf::MAX_BYTES
            })
        );
    }

    /// The room `conf`'s text holds beyond its length.
    fn room(conf: &RunConf) -> usize {
        conf.0
            .as_ref()
            .map_or(0, |shared| shared.json.capacity() - shared.json.len())
    }

    #[test]
    fn a_conf_keeps_little_room_beyond_its_text_and_never_much() {
        let text = format!(r#"{{"k":"{}"}}"#, "x".repeat(1_000));
        let read_with = |capacity| {
            let mut json = serde_json::Deserializer::from_str(&text);
            RunConfSeed::with_capacity(capacity)
                .deserialize(&mut json)
                .unwrap()
                .unwrap()
        };
        // The rest of a body is little room, kept rather than copied away.
        assert_eq!(room(&read_with(text.len() + 60)), 60);
        // Much room (as a conf sent with many spaces leaves) is given back.
        let spaced = read_with(4 * text.len());
        assert!(
            room(&spaced) <= text.len() / 4,
            "{} bytes of room",
            room(&spaced)
        );
        assert_eq!(spaced.as_json(), text);
        let parsed = RunConf::parse(serde_json::from_str(&text).unwrap()).unwrap();
        assert!(room(&parsed) <= text.len() / 4);
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_as_a_parsed_object_does() {
        let text = r#"{"a": 1, "b": {"x": 1, "x": [2]}, "a": "last"}"#;
        let conf = read(text).unwrap();
        assert_eq!(
            Value::Object(conf.as_map().clone()),
            json!({"a": "last", "b": {"x": [2]}})
        );
        assert_eq!(conf.as_json(), r#"{"a":"last","b":{"x":[2]}}"#);
        // The size is that of what is kept.
        let long = "y".repeat(RunConf::MAX_BYTES);
        let text = format!(r#"{{"k": "{long}", "k": 1}}"#);
        assert_eq!(read(&text).unwrap().as_json(), r#"{"k":1}"#);
        assert_eq!(
            read(r#"{"maestro": 1, "maestro": 2}"#),
            Err(InvalidConf::ReservedKey { key: "maestro" })
        );
    }

    #[test]
    fn confs_are_equal_whatever_the_order_they_were_written_in() {
        let a = read(r#"{"x": 1, "y": {"p": 1, "q": 2}}"#).unwrap();
        let b = read(r#"{"y": {"q": 2, "p": 1}, "x": 1}"#).unwrap();
        assert_ne!(a.as_json(), b.as_json());
        assert_eq!(a, b);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a, read(r#"{"x": 2, "y": {"p": 1, "q": 2}}"#).unwrap());
        assert_eq!(a.to_string(), a.as_json());
        assert_eq!(RunConf::default().as_json(), "{}");
    }

    #[test]
    fn an_engines_conf_never_shows_the_reserved_block() {
        let mut map = Map::new();
        map.insert("maestro".into(), json!({"customer_id": "acme"}));
        map.insert("date".into(), json!("2024-12-18"));
        let conf = RunConf::from_engine(map);
        assert_eq!(
            Value::Object(conf.into_map()),
            json!({"date": "2024-12-18"})
        );
    }
}
