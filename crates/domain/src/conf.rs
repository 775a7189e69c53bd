//! Run parameters: the JSON object a run is triggered with.

use std::{
    fmt,
    sync::{Arc, LazyLock},
};

use serde_json::{Map, Value};

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
/// assert_eq!(RunConf::parse(serde_json::Value::Null)?, RunConf::default());
/// assert_eq!(RunConf::parse(json!(["a"])), Err(InvalidConf::NotAnObject { found: "an array" }));
/// assert_eq!(RunConf::parse(json!({"maestro": 1})), Err(InvalidConf::ReservedKey { key: "maestro" }));
/// # Ok::<(), InvalidConf>(())
/// ```
///
/// Cheap to clone: a run's parameters are shared, not copied, by the runs,
/// events and answers that show them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunConf(Option<Arc<Map<String, Value>>>);

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
        let bytes = compact_len(&map);
        if bytes > Self::MAX_BYTES {
            return Err(InvalidConf::TooLarge {
                bytes,
                max: Self::MAX_BYTES,
            });
        }
        Ok(Self::of(map))
    }

    fn of(map: Map<String, Value>) -> Self {
        if map.is_empty() {
            Self(None)
        } else {
            Self(Some(Arc::new(map)))
        }
    }

    /// A conf an engine gave back, taken as it is: what Maestro reads back
    /// is not checked again (an engine may hold parameters set elsewhere),
    /// but Maestro's own block never shows.
    pub fn from_engine(mut map: Map<String, Value>) -> Self {
        map.remove(Self::RESERVED_KEY);
        Self::of(map)
    }

    /// The parameters.
    pub fn as_map(&self) -> &Map<String, Value> {
        self.0.as_deref().unwrap_or(&EMPTY)
    }

    /// The parameters, as the object they are (copied if shared).
    pub fn into_map(self) -> Map<String, Value> {
        self.0
            .map(|map| Arc::try_unwrap(map).unwrap_or_else(|shared| (*shared).clone()))
            .unwrap_or_default()
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

impl fmt::Display for RunConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self.as_map()).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

/// The length of `map` as compact JSON, counted as it is written out
/// rather than by building the text.
fn compact_len(map: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a map of JSON values to a counter cannot fail.
    serde_json::to_writer(&mut count, map).map_or(usize::MAX, |()| count.0)
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
    use serde_json::json;

    use super::*;

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
