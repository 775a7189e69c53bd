//! The soak's verdicts, as pure functions of what it recorded: accepted
//! executes against the run lists, runs per `Idempotency-Key`, and the
//! resident memory and open descriptors at the end against their level
//! after warm-up. Kept apart from the traffic so that tests can feed them
//! made-up records without starting anything.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

/// At the end, RSS and open descriptors may be at most this much above
/// their level after warm-up.
pub(super) const MAX_DRIFT: f64 = 0.10;

/// Open descriptors may also be this many above their level: counts are
/// small (a few dozen), so 10% of them is one or two descriptors, and a
/// log file rotated or a timer's descriptor is not a leak.
pub(super) const FD_SLACK: u64 = 4;

/// What the memory backend keeps per run in its history, rounded up: the
/// soak raises the history limit so that every run stays listed, so RSS
/// grows by this much per run by design (0.23 KiB measured; with a history
/// limit of 100 per pipeline RSS stays flat over 20,000 executes).
pub(super) const RUN_BYTES: u64 = 256;

/// The first part of the traffic is warm-up: allocator arenas, pools and
/// maps grow to their working size.
pub(super) const WARMUP_SHARE: f64 = 0.10;

/// The level after warm-up is the median of the samples taken from the end
/// of warm-up to this share of the traffic.
pub(super) const LEVEL_UNTIL_SHARE: f64 = 0.20;

/// An execute answered 200: a run the service says it started (or, for a
/// repeat of a key, the run it started for the first request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Accepted {
    /// The customer the token named.
    pub(super) customer: String,
    /// The pipeline, in normal form, as the answer named it.
    pub(super) pipeline: String,
    /// The run id the answer named.
    pub(super) run_id: String,
    /// The `Idempotency-Key` the request carried, if any.
    pub(super) key: Option<String>,
    /// When it was answered, from the start of the traffic.
    pub(super) at: Duration,
}

/// The run ids each pipeline's run list held at the end, by pipeline.
pub(super) type Listed = BTreeMap<String, BTreeSet<String>>;

/// The accepted runs that no run list holds, each once.
pub(super) fn lost<'a>(accepted: &'a [Accepted], listed: &Listed) -> Vec<&'a Accepted> {
    let mut seen = BTreeSet::new();
    accepted
        .iter()
        .filter(|run| seen.insert((run.pipeline.as_str(), run.run_id.as_str())))
        .filter(|run| {
            listed
                .get(&run.pipeline)
                .is_none_or(|runs| !runs.contains(&run.run_id))
        })
        .collect()
}

/// A key whose 200 answers named more than one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyWithRuns {
    /// The customer the key belongs to (keys are scoped to the customer).
    pub(super) customer: String,
    /// The key.
    pub(super) key: String,
    /// Every pipeline and run its answers named.
    pub(super) runs: BTreeSet<(String, String)>,
}

/// The keys whose 200 answers named two runs or more.
pub(super) fn keys_with_two_runs(accepted: &[Accepted]) -> Vec<KeyWithRuns> {
    let mut by_key: BTreeMap<(&str, &str), BTreeSet<(String, String)>> = BTreeMap::new();
    for run in accepted {
        if let Some(key) = &run.key {
            by_key
                .entry((run.customer.as_str(), key.as_str()))
                .or_default()
                .insert((run.pipeline.clone(), run.run_id.clone()));
        }
    }
    by_key
        .into_iter()
        .filter(|(_, runs)| runs.len() > 1)
        .map(|((customer, key), runs)| KeyWithRuns {
            customer: customer.to_owned(),
            key: key.to_owned(),
            runs,
        })
        .collect()
}

/// Distinct keys among the accepted executes.
pub(super) fn distinct_keys(accepted: &[Accepted]) -> usize {
    accepted
        .iter()
        .filter_map(|run| Some((run.customer.as_str(), run.key.as_deref()?)))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Distinct accepted runs.
pub(super) fn distinct_runs(accepted: &[Accepted]) -> usize {
    accepted
        .iter()
        .map(|run| (run.pipeline.as_str(), run.run_id.as_str()))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Distinct accepted runs answered after `at`.
pub(super) fn runs_after(accepted: &[Accepted], at: Duration) -> usize {
    accepted
        .iter()
        .filter(|run| run.at > at)
        .map(|run| (run.pipeline.as_str(), run.run_id.as_str()))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Listed runs that no 200 named: made by executes whose answer the client
/// never read (a timeout, a dropped connection) or by a bug.
pub(super) fn unanswered(accepted: &[Accepted], listed: &Listed) -> usize {
    let named: BTreeSet<(&str, &str)> = accepted
        .iter()
        .map(|run| (run.pipeline.as_str(), run.run_id.as_str()))
        .collect();
    listed
        .iter()
        .flat_map(|(pipeline, runs)| {
            runs.iter()
                .map(move |run| (pipeline.as_str(), run.as_str()))
        })
        .filter(|run| !named.contains(run))
        .count()
}

/// One reading of the service's footprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sample {
    /// When, counted from the start of the traffic.
    pub(super) at: Duration,
    /// Resident set size, in bytes.
    pub(super) rss: u64,
    /// Open file descriptors.
    pub(super) fds: u64,
}

/// The footprint's level: the median RSS and the median descriptor count
/// of some samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Level {
    /// Median RSS, in bytes.
    pub(super) rss: u64,
    /// Median open descriptors.
    pub(super) fds: u64,
    /// How many samples it is the median of.
    pub(super) samples: usize,
}

/// The median of `values`; the lower middle one for an even count.
fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    let middle = values.len().checked_sub(1)? / 2;
    values.get(middle).copied()
}

/// The level of `samples`, nothing when there are none.
pub(super) fn level(samples: &[Sample]) -> Option<Level> {
    Some(Level {
        rss: median(samples.iter().map(|sample| sample.rss).collect())?,
        fds: median(samples.iter().map(|sample| sample.fds).collect())?,
        samples: samples.len(),
    })
}

/// The end of the window the level after warm-up is read in.
pub(super) fn level_until(traffic: Duration) -> Duration {
    traffic.mul_f64(LEVEL_UNTIL_SHARE)
}

/// The level after warm-up of traffic that lasted `traffic`: the median of
/// the samples taken from [`WARMUP_SHARE`] to [`LEVEL_UNTIL_SHARE`] of it.
pub(super) fn level_after_warmup(samples: &[Sample], traffic: Duration) -> Option<Level> {
    let from = traffic.mul_f64(WARMUP_SHARE);
    let until = level_until(traffic);
    let window: Vec<Sample> = samples
        .iter()
        .filter(|sample| sample.at >= from && sample.at <= until)
        .copied()
        .collect();
    level(&window)
}

/// Whether RSS at the end is at most [`MAX_DRIFT`] above its level, once
/// `kept` bytes of state the service was asked to keep are set aside.
pub(super) fn rss_is_back(level: u64, end: u64, kept: u64) -> bool {
    end.saturating_sub(kept) as f64 <= level as f64 * (1.0 + MAX_DRIFT)
}

/// Whether the open descriptors at the end are at most [`MAX_DRIFT`] plus
/// [`FD_SLACK`] above their level.
pub(super) fn fds_are_back(level: u64, end: u64) -> bool {
    end as f64 <= level as f64 * (1.0 + MAX_DRIFT) + FD_SLACK as f64
}

/// `end` against `level` in percent, e.g. `+3.2%`.
pub(super) fn drift(level: u64, end: u64) -> String {
    if level == 0 {
        return "n/a".to_owned();
    }
    format!("{:+.1}%", (end as f64 / level as f64 - 1.0) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(pipeline: &str, run_id: &str, key: Option<&str>) -> Accepted {
        Accepted {
            customer: "soak-a".to_owned(),
            pipeline: pipeline.to_owned(),
            run_id: run_id.to_owned(),
            key: key.map(str::to_owned),
            at: Duration::ZERO,
        }
    }

    fn listed(runs: &[(&str, &str)]) -> Listed {
        let mut listed = Listed::new();
        for (pipeline, run) in runs {
            listed
                .entry((*pipeline).to_owned())
                .or_default()
                .insert((*run).to_owned());
        }
        listed
    }

    #[test]
    fn a_run_missing_from_its_pipelines_list_is_lost() {
        let runs = [
            accepted("p1", "manual__1", None),
            accepted("p1", "manual__2", Some("k1")),
            // A replay names the same run again: counted once.
            accepted("p1", "manual__2", Some("k1")),
            accepted("p2", "manual__3", None),
        ];
        let all = listed(&[
            ("p1", "manual__1"),
            ("p1", "manual__2"),
            ("p2", "manual__3"),
        ]);
        assert!(lost(&runs, &all).is_empty());

        let without = listed(&[("p1", "manual__1"), ("p2", "manual__3")]);
        assert_eq!(lost(&runs, &without), [&runs[1]]);
        // A run listed under another pipeline is still lost from its own.
        let elsewhere = listed(&[
            ("p1", "manual__1"),
            ("p1", "manual__2"),
            ("p1", "manual__3"),
        ]);
        assert_eq!(lost(&runs, &elsewhere), [&runs[3]]);
        assert_eq!(lost(&runs, &Listed::new()).len(), 3);
    }

    #[test]
    fn a_key_whose_answers_name_two_runs_is_found() {
        let runs = [
            accepted("p1", "manual__1", Some("k1")),
            accepted("p1", "manual__1", Some("k1")),
            accepted("p1", "manual__2", Some("k2")),
            accepted("p1", "manual__3", None),
            accepted("p1", "manual__4", None),
        ];
        assert!(keys_with_two_runs(&runs).is_empty());
        assert_eq!(distinct_keys(&runs), 2);
        assert_eq!(distinct_runs(&runs), 4);

        let mut doubled = runs.to_vec();
        doubled.push(accepted("p1", "manual__5", Some("k2")));
        assert_eq!(
            keys_with_two_runs(&doubled),
            [KeyWithRuns {
                customer: "soak-a".to_owned(),
                key: "k2".to_owned(),
                runs: BTreeSet::from([
                    ("p1".to_owned(), "manual__2".to_owned()),
                    ("p1".to_owned(), "manual__5".to_owned()),
                ]),
            }]
        );
    }

    #[test]
    fn the_same_key_of_two_customers_is_two_keys() {
        let mut other = accepted("p9", "manual__9", Some("k1"));
        other.customer = "soak-b".to_owned();
        let runs = [accepted("p1", "manual__1", Some("k1")), other];
        assert!(keys_with_two_runs(&runs).is_empty());
        assert_eq!(distinct_keys(&runs), 2);
    }

    #[test]
    fn runs_answered_after_an_instant_are_counted_once() {
        let at = |pipeline: &str, run: &str, second: u64| Accepted {
            at: Duration::from_secs(second),
            ..accepted(pipeline, run, None)
        };
        let runs = [
            at("p1", "manual__1", 10),
            at("p1", "manual__2", 70),
            at("p1", "manual__2", 80),
            at("p2", "manual__2", 90),
        ];
        assert_eq!(runs_after(&runs, Duration::from_secs(60)), 2);
        assert_eq!(runs_after(&runs, Duration::ZERO), 3);
        assert_eq!(runs_after(&runs, Duration::from_secs(90)), 0);
        assert_eq!(
            level_until(Duration::from_secs(600)),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn listed_runs_that_no_answer_named_are_counted() {
        let runs = [accepted("p1", "manual__1", None)];
        let all = listed(&[
            ("p1", "manual__1"),
            ("p1", "manual__2"),
            ("p2", "manual__1"),
        ]);
        assert_eq!(unanswered(&runs, &all), 2);
        assert_eq!(unanswered(&runs, &listed(&[("p1", "manual__1")])), 0);
    }

    fn sample(second: u64, rss_mib: u64, fds: u64) -> Sample {
        Sample {
            at: Duration::from_secs(second),
            rss: rss_mib * 1024 * 1024,
            fds,
        }
    }

    #[test]
    fn the_level_is_the_median_of_the_samples_between_10_and_20_percent() {
        let samples = [
            // Warm-up: left out, however high.
            sample(0, 50, 90),
            sample(50, 50, 90),
            // 60 s to 120 s of a 600 s run.
            sample(60, 10, 20),
            sample(80, 12, 24),
            sample(100, 11, 22),
            sample(120, 30, 21),
            // Later: left out.
            sample(140, 99, 99),
        ];
        let level = level_after_warmup(&samples, Duration::from_secs(600)).expect("a level");
        assert_eq!(
            level,
            Level {
                rss: 11 * 1024 * 1024,
                fds: 21,
                samples: 4
            }
        );
        assert_eq!(
            level_after_warmup(&samples[..2], Duration::from_secs(600)),
            None
        );
    }

    #[test]
    fn rss_more_than_10_percent_above_its_level_has_drifted() {
        let level = 10 * 1024 * 1024;
        assert!(rss_is_back(level, level, 0));
        assert!(rss_is_back(level, level / 2, 0), "lower is back too");
        assert!(rss_is_back(level, 11 * 1024 * 1024, 0));
        assert!(!rss_is_back(level, 11 * 1024 * 1024 + 1, 0));
        assert!(!rss_is_back(level, 2 * level, 0));
        // What the runs kept since the level hold is set aside, no more.
        let kept = 4_000 * RUN_BYTES;
        assert!(rss_is_back(level, 11 * 1024 * 1024 + kept, kept));
        assert!(!rss_is_back(level, 11 * 1024 * 1024 + kept + 1, kept));
        assert!(!rss_is_back(level, 2 * level, kept));
        assert_eq!(drift(level, 11 * 1024 * 1024), "+10.0%");
        assert_eq!(drift(level, level / 2), "-50.0%");
        assert_eq!(drift(0, 1), "n/a");
    }

    #[test]
    fn descriptors_may_exceed_their_level_by_10_percent_and_a_few() {
        assert!(fds_are_back(20, 20));
        assert!(fds_are_back(20, 26), "20 + 2 + 4");
        assert!(!fds_are_back(20, 27));
        assert!(fds_are_back(200, 224));
        assert!(!fds_are_back(200, 225));
    }
}
