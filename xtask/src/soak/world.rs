//! What the soak's service holds and who calls it: a few customers with a
//! few pipelines each, one more pipeline that is paused and unpaused, the
//! secret the tokens are signed with, and the fixture file that loads the
//! pipelines into the memory backend (the fake upstream loads the same).

use anyhow::Context as _;
use tempfile::NamedTempFile;
use uuid::Uuid;

use crate::token::{mint, unix_now};

/// The customers.
const CUSTOMERS: [&str; 3] = ["soak-a", "soak-b", "soak-c"];
/// Pipelines per customer that are executed and read.
const PIPELINES_PER_CUSTOMER: usize = 3;

/// A pipeline of the soak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pipeline {
    /// Its id in normal form (lower case, underscores).
    pub(super) id: String,
    /// Its owner.
    pub(super) customer: usize,
    /// Its name.
    pub(super) name: String,
}

/// The customers, their pipelines and their tokens.
#[derive(Debug)]
pub(super) struct World {
    /// The HS256 secret the service verifies tokens with.
    pub(super) secret: String,
    /// Customer names, by index.
    pub(super) customers: Vec<String>,
    /// A valid token per customer, by index.
    pub(super) tokens: Vec<String>,
    /// The pipelines that are executed and read.
    pub(super) pipelines: Vec<Pipeline>,
    /// The pipeline that is paused and unpaused, of the first customer.
    pub(super) toggled: Pipeline,
}

impl World {
    /// A fresh world whose tokens stay valid for `valid_for_seconds`.
    pub(super) fn new(valid_for_seconds: u64) -> anyhow::Result<Self> {
        let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let now = unix_now()?;
        let customers: Vec<String> = CUSTOMERS.iter().map(|&name| name.to_owned()).collect();
        let tokens = customers
            .iter()
            .map(|customer| mint(&secret, customer, now + valid_for_seconds))
            .collect::<anyhow::Result<_>>()?;
        let pipelines = (0..customers.len())
            .flat_map(|customer| {
                (0..PIPELINES_PER_CUSTOMER).map(move |index| Pipeline {
                    id: normal_id(Uuid::new_v4()),
                    customer,
                    name: format!("soak {customer}-{index}"),
                })
            })
            .collect();
        let toggled = Pipeline {
            id: normal_id(Uuid::new_v4()),
            customer: 0,
            name: "soak paused and unpaused".to_owned(),
        };
        Ok(Self {
            secret,
            customers,
            tokens,
            pipelines,
            toggled,
        })
    }

    /// Every pipeline, the toggled one last.
    pub(super) fn all_pipelines(&self) -> impl Iterator<Item = &Pipeline> {
        self.pipelines.iter().chain(std::iter::once(&self.toggled))
    }

    /// The customer's name.
    pub(super) fn customer(&self, pipeline: &Pipeline) -> &str {
        &self.customers[pipeline.customer]
    }

    /// The token of the pipeline's customer.
    pub(super) fn token(&self, pipeline: &Pipeline) -> &str {
        &self.tokens[pipeline.customer]
    }

    /// The token of the customer named `customer`.
    pub(super) fn token_of(&self, customer: &str) -> Option<&str> {
        let index = self.customers.iter().position(|name| name == customer)?;
        Some(&self.tokens[index])
    }

    /// A token signed with another secret, for the first customer.
    pub(super) fn token_with_another_secret(&self) -> anyhow::Result<String> {
        let other = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        mint(&other, &self.customers[0], unix_now()? + 3600)
    }

    /// A token that expired an hour ago, well past the service's leeway.
    pub(super) fn expired_token(&self) -> anyhow::Result<String> {
        mint(&self.secret, &self.customers[0], unix_now()? - 3600)
    }

    /// The memory backend's fixture: every pipeline, hyphenated (the
    /// service normalizes it).
    pub(super) fn fixture(&self) -> anyhow::Result<NamedTempFile> {
        let file = tempfile::Builder::new()
            .prefix("maestro-soak-")
            .suffix(".json")
            .tempfile()
            .context("cannot create the fixture file")?;
        let pipelines: Vec<serde_json::Value> = self
            .all_pipelines()
            .map(|pipeline| {
                serde_json::json!({
                    "id": pipeline.id.replace('_', "-"),
                    "customer_id": self.customer(pipeline),
                    "name": pipeline.name,
                })
            })
            .collect();
        serde_json::to_writer(file.as_file(), &serde_json::json!({"pipelines": pipelines}))
            .context("cannot write the fixture file")?;
        Ok(file)
    }
}

/// A token that asks for the `none` algorithm: `{"alg":"none","typ":"JWT"}`
/// and `{"customer_id":"soak-a","exp":4102444800}` without a signature.
pub(super) const UNSIGNED_TOKEN: &str =
    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJjdXN0b21lcl9pZCI6InNvYWstYSIsImV4cCI6NDEwMjQ0NDgwMH0.";

/// A pipeline id in normal form.
fn normal_id(id: Uuid) -> String {
    id.hyphenated().to_string().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unsigned_token_says_none_and_names_the_first_customer() {
        use base64_free::decode_segment;
        let mut parts = UNSIGNED_TOKEN.split('.');
        let header = decode_segment(parts.next().expect("a header"));
        let claims = decode_segment(parts.next().expect("claims"));
        assert_eq!(header, r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(claims, r#"{"customer_id":"soak-a","exp":4102444800}"#);
        assert_eq!(parts.next(), Some(""), "no signature");
    }

    /// Just enough base64url for the test above, so that the soak needs no
    /// base64 crate.
    mod base64_free {
        pub(super) fn decode_segment(segment: &str) -> String {
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut bits = 0u32;
            let mut count = 0;
            let mut out = Vec::new();
            for byte in segment.bytes() {
                let value = ALPHABET.iter().position(|&c| c == byte).expect("base64url") as u32;
                bits = (bits << 6) | value;
                count += 6;
                if count >= 8 {
                    count -= 8;
                    out.push((bits >> count) as u8);
                    bits &= (1 << count) - 1;
                }
            }
            String::from_utf8(out).expect("UTF-8")
        }
    }

    #[test]
    fn the_world_has_pipelines_for_every_customer_and_a_token_each() {
        let world = World::new(3600).expect("a world");
        assert_eq!(world.tokens.len(), world.customers.len());
        assert_eq!(world.pipelines.len(), 9);
        assert_eq!(world.all_pipelines().count(), 10);
        assert!(
            world
                .all_pipelines()
                .all(|p| p.id.len() == 36 && !p.id.contains('-'))
        );
        assert_eq!(world.customer(&world.toggled), "soak-a");
        assert_eq!(world.token_of("soak-b"), Some(world.tokens[1].as_str()));
        let fixture = world.fixture().expect("a fixture");
        let text = std::fs::read_to_string(fixture.path()).expect("readable");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(json["pipelines"].as_array().map(Vec::len), Some(10));
    }
}
