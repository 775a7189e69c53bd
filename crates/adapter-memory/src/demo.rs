//! The built-in demo set: what `maestro serve` shows when no fixture is
//! given, kept as a fixture file (`demo.json`) so that it reads like one.

use domain::{Pipeline, Timestamp};

use crate::fixture::parse_fixture;

/// The customer that owns the demo pipelines.
pub const DEMO_CUSTOMER: &str = "demo";

/// An active, on-demand demo pipeline (`orders-etl`): the one to execute.
pub const DEMO_PIPELINE_ID: &str = "c7142061_8fd4_46da_8da4_acfa6a4426d4";

/// An active demo pipeline with a cron schedule (`nightly-revenue-report`).
pub const DEMO_SCHEDULED_PIPELINE_ID: &str = "a4cfb17c_0b0b_4c74_ba45_f0daeb274549";

/// A paused demo pipeline (`crm-contacts-sync`): executing it is refused.
pub const DEMO_PAUSED_PIPELINE_ID: &str = "6d4bff75_235a_472b_b1cb_47a1ef7227b9";

/// Another customer, whose pipeline the demo customer cannot see.
pub const ACME_CUSTOMER: &str = "acme";

/// The other customer's one pipeline (`inventory-snapshot`).
pub const ACME_PIPELINE_ID: &str = "7d36cffe_b0a9_479e_98a3_82e07fb6d5a3";

const DEMO_FIXTURE: &str = include_str!("demo.json");

/// The demo pipelines: three of [`DEMO_CUSTOMER`] and one of
/// [`ACME_CUSTOMER`].
pub fn demo_pipelines() -> Vec<Pipeline> {
    // Every demo pipeline carries its own instants, so no load time is
    // needed. The fixture is part of the source and a test parses it, so a
    // failure here is a build defect, not a run-time condition.
    parse_fixture(DEMO_FIXTURE, Timestamp::UNIX_EPOCH).expect("the built-in demo fixture is valid")
}

#[cfg(test)]
mod tests {
    use domain::{PipelineId, PipelineStatus};

    use super::*;

    #[test]
    fn the_demo_fixture_parses() {
        let pipelines = crate::parse_fixture(DEMO_FIXTURE, Timestamp::UNIX_EPOCH).unwrap();
        // No demo pipeline depends on the load time.
        assert!(
            pipelines
                .iter()
                .all(|p| p.created_at > Timestamp::UNIX_EPOCH)
        );
    }

    #[test]
    fn the_demo_set_has_what_the_consts_promise() {
        let pipelines = demo_pipelines();
        let find = |id: &str| {
            let id = PipelineId::parse(id).unwrap();
            pipelines.iter().find(|p| p.id == id).unwrap()
        };
        let active = find(DEMO_PIPELINE_ID);
        assert_eq!(active.customer_id.as_str(), DEMO_CUSTOMER);
        assert_eq!(active.status, PipelineStatus::Active);
        assert!(!active.jobs.is_empty());

        let scheduled = find(DEMO_SCHEDULED_PIPELINE_ID);
        assert_eq!(scheduled.customer_id.as_str(), DEMO_CUSTOMER);
        assert!(scheduled.cron.is_some());

        let paused = find(DEMO_PAUSED_PIPELINE_ID);
        assert_eq!(paused.customer_id.as_str(), DEMO_CUSTOMER);
        assert_eq!(paused.status, PipelineStatus::Paused);

        assert_eq!(find(ACME_PIPELINE_ID).customer_id.as_str(), ACME_CUSTOMER);
        assert_eq!(pipelines.len(), 4);
        let demo_count = pipelines
            .iter()
            .filter(|p| p.customer_id.as_str() == DEMO_CUSTOMER)
            .count();
        assert_eq!(demo_count, 3);
    }

    #[test]
    fn the_demo_ids_are_already_normalized() {
        for id in [
            DEMO_PIPELINE_ID,
            DEMO_SCHEDULED_PIPELINE_ID,
            DEMO_PAUSED_PIPELINE_ID,
            ACME_PIPELINE_ID,
        ] {
            assert_eq!(PipelineId::parse(id).unwrap().as_str(), id);
        }
    }
}
