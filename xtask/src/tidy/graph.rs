//! The workspace's dependency graph as `cargo metadata` resolves it, what
//! building one crate really compiles (with Cargo's feature rules), and the
//! architecture rules that are about who depends on whom.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use cargo_metadata::{DependencyKind, Metadata};

use super::{Violation, relative};

const RULE_DOMAIN: &str = "domain compiles only the crates on its allow-list";
const RULE_ADAPTERS: &str =
    "no adapter depends on another adapter, and only app depends on adapters";
const RULE_RUNTIME: &str = "runtime depends only on domain, tokio and chrono";
const RULE_TEST_SUPPORT: &str = "a *-test-support crate is only ever a dev-dependency";

/// The crate allowed to depend on adapters.
const ADAPTER_USER: &str = "app";

/// How a package depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `[dependencies]`: compiled into the dependent.
    Normal,
    /// `[build-dependencies]`: compiled for its build script.
    Build,
    /// `[dev-dependencies]`: its tests, examples and benches only.
    Dev,
}

impl Kind {
    fn section(self) -> &'static str {
        match self {
            Self::Normal => "[dependencies]",
            Self::Build => "[build-dependencies]",
            Self::Dev => "[dev-dependencies]",
        }
    }
}

/// One resolved dependency of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Edge {
    /// The name the dependent gives it: its key in the manifest, which
    /// features name it by.
    pub(super) key: String,
    /// The id of the package depended on.
    pub(super) to: String,
    /// The section it is declared in.
    pub(super) kind: Kind,
    /// Whether only a feature switches it on.
    pub(super) optional: bool,
    /// Whether it is taken with its default features.
    pub(super) default_features: bool,
    /// The features the dependent asks of it.
    pub(super) features: Vec<String>,
}

/// One package of the graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Package {
    /// Its name.
    pub(super) name: String,
    /// Its manifest, relative to the workspace root, for messages.
    pub(super) manifest: String,
    /// Its `[features]`.
    pub(super) features: BTreeMap<String, Vec<String>>,
    /// Its dependencies, as resolved.
    pub(super) edges: Vec<Edge>,
}

/// The packages of the workspace and of everything it depends on, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Graph {
    /// Every package, by id.
    pub(super) packages: BTreeMap<String, Package>,
    /// The ids of the workspace's members.
    pub(super) members: Vec<String>,
}

impl Graph {
    /// The graph of `metadata`, whose workspace lives at `root`.
    ///
    /// `cargo metadata` resolves the whole workspace at once, with every
    /// feature any member asks for switched on (`adapter-http`'s tests
    /// turn on `domain`'s `mock`, say). What each dependency was declared
    /// with is kept, so that [`Graph::build_tree`] can work out what one
    /// crate compiles on its own.
    pub(super) fn from_metadata(metadata: &Metadata, root: &Path) -> Self {
        let by_id: BTreeMap<&str, &cargo_metadata::Package> = metadata
            .packages
            .iter()
            .map(|package| (package.id.repr.as_str(), package))
            .collect();
        let nodes = metadata
            .resolve
            .as_ref()
            .map(|resolve| resolve.nodes.as_slice())
            .unwrap_or_default();
        let mut packages = BTreeMap::new();
        for node in nodes {
            let Some(package) = by_id.get(node.id.repr.as_str()) else {
                continue;
            };
            let mut edges = Vec::new();
            for dep in &node.deps {
                let Some(target) = by_id.get(dep.pkg.repr.as_str()) else {
                    continue;
                };
                for info in &dep.dep_kinds {
                    let kind = match info.kind {
                        DependencyKind::Normal => Kind::Normal,
                        DependencyKind::Build => Kind::Build,
                        // Anything Cargo adds later is taken as test-only,
                        // like dev-dependencies: the rules then say less,
                        // never something false.
                        _ => Kind::Dev,
                    };
                    // The declaration this resolved edge comes from.
                    let declared = package.dependencies.iter().find(|declared| {
                        declared.name == *target.name
                            && declared.kind == info.kind
                            && declared.target == info.target
                            && declared.req.matches(&target.version)
                    });
                    edges.push(match declared {
                        Some(declared) => Edge {
                            key: declared.rename.clone().unwrap_or(declared.name.clone()),
                            to: dep.pkg.repr.clone(),
                            kind,
                            optional: declared.optional,
                            default_features: declared.uses_default_features,
                            features: declared.features.clone(),
                        },
                        // Not found: taken as always on, which can only
                        // make the tree larger and the checks stricter.
                        None => Edge {
                            key: target.name.to_string(),
                            to: dep.pkg.repr.clone(),
                            kind,
                            optional: false,
                            default_features: true,
                            features: Vec::new(),
                        },
                    });
                }
            }
            packages.insert(
                node.id.repr.clone(),
                Package {
                    name: package.name.to_string(),
                    manifest: relative(root, package.manifest_path.as_std_path()),
                    features: package.features.clone(),
                    edges,
                },
            );
        }
        Self {
            packages,
            members: metadata
                .workspace_members
                .iter()
                .map(|id| id.repr.clone())
                .collect(),
        }
    }

    /// The member named `name`, with its id.
    pub(super) fn member(&self, name: &str) -> Option<(&str, &Package)> {
        self.members_iter()
            .find(|(_, package)| package.name == name)
    }

    fn members_iter(&self) -> impl Iterator<Item = (&str, &Package)> {
        self.members
            .iter()
            .filter_map(|id| Some((id.as_str(), self.packages.get(id)?)))
    }

    fn name<'a>(&'a self, id: &'a str) -> &'a str {
        self.packages
            .get(id)
            .map_or(id, |package| package.name.as_str())
    }

    /// What building package `root` with its default features compiles:
    /// its normal and build dependencies, transitively, each with the
    /// features its dependents ask for, and the optional dependencies those
    /// features switch on. Each package id maps to the chain of package
    /// names that first pulled it in, `root`'s first and its own last.
    ///
    /// Cargo resolves the features of build dependencies apart from the
    /// others; here they are merged, which can only add packages.
    pub(super) fn build_tree(&self, root: &str) -> BTreeMap<String, Vec<String>> {
        let mut requested: BTreeMap<&str, BTreeSet<String>> =
            BTreeMap::from([(root, BTreeSet::from(["default".to_owned()]))]);
        let mut paths = BTreeMap::from([(root.to_owned(), vec![self.name(root).to_owned()])]);
        let mut queue = vec![root];
        while let Some(id) = queue.pop() {
            let Some(package) = self.packages.get(id) else {
                continue;
            };
            let enabled = Enabled::of(package, &requested[id]);
            for edge in package.edges.iter().filter(|edge| edge.kind != Kind::Dev) {
                if edge.optional && !enabled.dependencies.contains(&edge.key) {
                    continue;
                }
                let mut features: BTreeSet<String> = edge.features.iter().cloned().collect();
                if edge.default_features {
                    features.insert("default".to_owned());
                }
                features.extend(
                    enabled
                        .dependency_features
                        .iter()
                        .filter(|(key, _)| *key == edge.key)
                        .map(|(_, feature)| feature.clone()),
                );
                let known = requested.entry(edge.to.as_str()).or_default();
                let new = !paths.contains_key(&edge.to) || !features.is_subset(known);
                known.extend(features);
                if !paths.contains_key(&edge.to) {
                    let mut path = paths[id].clone();
                    path.push(self.name(&edge.to).to_owned());
                    paths.insert(edge.to.clone(), path);
                }
                if new {
                    queue.push(edge.to.as_str());
                }
            }
        }
        paths
    }
}

/// What a package's requested features switch on.
#[derive(Debug, Default)]
struct Enabled {
    /// The optional dependencies switched on, by key.
    dependencies: BTreeSet<String>,
    /// Features asked of dependencies, as (key, feature).
    dependency_features: Vec<(String, String)>,
}

impl Enabled {
    /// Follows `requested` through `package`'s `[features]`: `dep:x` and
    /// `x/f` switch dependency `x` on, `x?/f` asks `f` of `x` only if
    /// something else switches it on, and the name of an optional
    /// dependency that no feature of that name shadows switches it on.
    fn of(package: &Package, requested: &BTreeSet<String>) -> Self {
        let mut enabled = Self::default();
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = requested.iter().map(String::as_str).collect();
        while let Some(feature) = stack.pop() {
            if let Some((key, dependency_feature)) = feature.split_once('/') {
                let (key, weak) = match key.strip_suffix('?') {
                    Some(key) => (key, true),
                    None => (key, false),
                };
                if !weak {
                    enabled.dependencies.insert(key.to_owned());
                }
                enabled
                    .dependency_features
                    .push((key.to_owned(), dependency_feature.to_owned()));
            } else if let Some(key) = feature.strip_prefix("dep:") {
                enabled.dependencies.insert(key.to_owned());
            } else if seen.insert(feature) {
                match package.features.get(feature) {
                    Some(implied) => stack.extend(implied.iter().map(String::as_str)),
                    None => {
                        if package
                            .edges
                            .iter()
                            .any(|edge| edge.optional && edge.key == feature)
                        {
                            enabled.dependencies.insert(feature.to_owned());
                        }
                    }
                }
            }
        }
        enabled
    }
}

/// The packages in `member`'s build tree (see [`Graph::build_tree`]) that
/// are not on `allowed`, each with the chain that pulled it in.
pub(super) fn check_build_tree(graph: &Graph, member: &str, allowed: &[&str]) -> Vec<Violation> {
    let Some((id, package)) = graph.member(member) else {
        return vec![Violation {
            file: "Cargo.toml".to_owned(),
            rule: RULE_DOMAIN,
            detail: format!("the workspace has no member named {member}"),
        }];
    };
    graph
        .build_tree(id)
        .into_iter()
        .filter(|(other, _)| other != id)
        .filter(|(other, _)| !allowed.contains(&graph.name(other)))
        .map(|(other, path)| Violation {
            file: package.manifest.clone(),
            rule: RULE_DOMAIN,
            detail: format!(
                "`{}` is not on the allow-list; it is pulled in by {}",
                graph.name(&other),
                path.join(" -> ")
            ),
        })
        .collect()
}

fn is_adapter(name: &str) -> bool {
    name.starts_with("adapter-")
}

fn is_test_support(name: &str) -> bool {
    name.ends_with("-test-support")
}

/// The normal and build dependencies of every member, with the package
/// each one names.
fn compiled_edges(graph: &Graph) -> impl Iterator<Item = (&Package, &Edge, &str)> {
    graph.members_iter().flat_map(move |(_, package)| {
        package
            .edges
            .iter()
            .filter(|edge| edge.kind != Kind::Dev)
            .map(move |edge| (package, edge, graph.name(&edge.to)))
    })
}

/// No `adapter-*` member compiles another one in, and no member but
/// [`ADAPTER_USER`] compiles any in. Tests may use what they like.
pub(super) fn check_adapters(graph: &Graph) -> Vec<Violation> {
    compiled_edges(graph)
        .filter(|(package, _, to)| is_adapter(to) && package.name != ADAPTER_USER)
        .map(|(package, edge, to)| {
            let why = if is_adapter(&package.name) {
                "an adapter must not depend on another adapter"
            } else {
                "only app may depend on adapters"
            };
            Violation {
                file: package.manifest.clone(),
                rule: RULE_ADAPTERS,
                detail: format!(
                    "{} has `{to}` in {}: {why}",
                    package.name,
                    edge.kind.section()
                ),
            }
        })
        .collect()
}

/// `member` compiles in only the packages of `allowed`, directly.
pub(super) fn check_runtime(graph: &Graph, member: &str, allowed: &[&str]) -> Vec<Violation> {
    compiled_edges(graph)
        .filter(|(package, _, to)| package.name == member && !allowed.contains(to))
        .map(|(package, edge, to)| Violation {
            file: package.manifest.clone(),
            rule: RULE_RUNTIME,
            detail: format!(
                "{member} has `{to}` in {}; it may depend on {} only",
                edge.kind.section(),
                allowed.join(", ")
            ),
        })
        .collect()
}

/// No member compiles a `*-test-support` crate in.
pub(super) fn check_test_support(graph: &Graph) -> Vec<Violation> {
    compiled_edges(graph)
        .filter(|(_, _, to)| is_test_support(to))
        .map(|(package, edge, to)| Violation {
            file: package.manifest.clone(),
            rule: RULE_TEST_SUPPORT,
            detail: format!(
                "{} has `{to}` in {}; move it to [dev-dependencies]",
                package.name,
                edge.kind.section()
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dependency on `to`, by its own name, always on, with its
    /// default features.
    fn on(to: &str, kind: Kind) -> Edge {
        Edge {
            key: to.to_owned(),
            to: to.to_owned(),
            kind,
            optional: false,
            default_features: true,
            features: Vec::new(),
        }
    }

    fn optional(to: &str) -> Edge {
        Edge {
            optional: true,
            ..on(to, Kind::Normal)
        }
    }

    fn with_features(edge: Edge, features: &[&str]) -> Edge {
        Edge {
            features: features.iter().map(|&feature| feature.to_owned()).collect(),
            ..edge
        }
    }

    /// Features with what each switches on.
    type Features<'a> = &'a [(&'a str, &'a [&'a str])];

    /// A graph whose package ids are their names; `members` are the
    /// workspace's, each with a manifest under `crates/`.
    fn graph(members: &[&str], packages: Vec<(&str, Features<'_>, Vec<Edge>)>) -> Graph {
        Graph {
            packages: packages
                .into_iter()
                .map(|(name, features, edges)| {
                    let package = Package {
                        name: name.to_owned(),
                        manifest: format!("crates/{name}/Cargo.toml"),
                        features: features
                            .iter()
                            .map(|(feature, implied)| {
                                (
                                    (*feature).to_owned(),
                                    implied.iter().map(|&f| f.to_owned()).collect(),
                                )
                            })
                            .collect(),
                        edges,
                    };
                    (name.to_owned(), package)
                })
                .collect(),
            members: members.iter().map(|&member| member.to_owned()).collect(),
        }
    }

    /// A graph with `members` and `edges` (from, kind, to) between
    /// packages that have no features.
    fn plain(members: &[&str], edges: &[(&str, Kind, &str)]) -> Graph {
        let mut graph = graph(members, Vec::new());
        for &(from, kind, to) in edges {
            for name in [from, to] {
                graph
                    .packages
                    .entry(name.to_owned())
                    .or_insert_with(|| Package {
                        name: name.to_owned(),
                        manifest: format!("crates/{name}/Cargo.toml"),
                        ..Package::default()
                    });
            }
            let package = graph.packages.get_mut(from).expect("just added");
            package.edges.push(on(to, kind));
        }
        graph
    }

    fn names(tree: &BTreeMap<String, Vec<String>>) -> Vec<&str> {
        tree.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_tree_within_the_allow_list_breaks_no_rule() {
        let graph = plain(
            &["domain"],
            &[
                ("domain", Kind::Normal, "chrono"),
                ("chrono", Kind::Normal, "num-traits"),
                ("num-traits", Kind::Build, "autocfg"),
            ],
        );
        let allowed = ["chrono", "num-traits", "autocfg"];
        assert_eq!(check_build_tree(&graph, "domain", &allowed), []);
    }

    #[test]
    fn a_runtime_pulled_in_deep_down_is_reported_with_the_chain_that_pulled_it() {
        let graph = plain(
            &["domain"],
            &[
                ("domain", Kind::Normal, "helper"),
                ("helper", Kind::Normal, "tokio"),
                ("tokio", Kind::Normal, "mio"),
            ],
        );
        let violations = check_build_tree(&graph, "domain", &["helper"]);
        let details: Vec<&str> = violations.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(
            details,
            [
                "`mio` is not on the allow-list; it is pulled in by domain -> helper -> tokio -> mio",
                "`tokio` is not on the allow-list; it is pulled in by domain -> helper -> tokio",
            ]
        );
        assert_eq!(violations[0].file, "crates/domain/Cargo.toml");
        assert!(violations[0].to_string().contains(RULE_DOMAIN));
    }

    #[test]
    fn dev_dependencies_are_not_in_the_tree() {
        let graph = plain(&["domain"], &[("domain", Kind::Dev, "tokio")]);
        assert_eq!(names(&graph.build_tree("domain")), ["domain"]);
    }

    #[test]
    fn an_optional_dependency_is_in_the_tree_only_when_a_default_feature_asks_for_it() {
        let packages = |default: &'static [&'static str]| {
            let features: &'static [(&'static str, &'static [&'static str])] = match default {
                [] => &[("mock", &["dep:mockall"])],
                _ => &[("default", &["mock"]), ("mock", &["dep:mockall"])],
            };
            graph(
                &["domain"],
                vec![
                    ("domain", features, vec![optional("mockall")]),
                    ("mockall", &[], vec![]),
                ],
            )
        };
        assert_eq!(names(&packages(&[]).build_tree("domain")), ["domain"]);
        assert_eq!(
            names(&packages(&["mock"]).build_tree("domain")),
            ["domain", "mockall"]
        );
    }

    #[test]
    fn features_asked_by_dependents_switch_on_optional_dependencies_further_down() {
        let graph = graph(
            &["domain"],
            vec![
                (
                    "domain",
                    &[],
                    vec![
                        with_features(on("chrono", Kind::Normal), &["clock"]),
                        with_features(on("serde_json", Kind::Normal), &["std"]),
                    ],
                ),
                // `clock` switches a dependency on by its implicit feature.
                (
                    "chrono",
                    &[("clock", &["iana-time-zone"])],
                    vec![optional("iana-time-zone"), optional("js-sys")],
                ),
                ("iana-time-zone", &[], vec![]),
                ("js-sys", &[], vec![]),
                // `std` asks a feature of a dependency it switches on, and
                // of another only if it is on anyway.
                (
                    "serde_json",
                    &[("std", &["serde_core/std", "indexmap?/std"])],
                    vec![optional("serde_core"), optional("indexmap")],
                ),
                (
                    "serde_core",
                    &[("std", &["dep:serde_derive"])],
                    vec![optional("serde_derive")],
                ),
                ("serde_derive", &[], vec![]),
                ("indexmap", &[], vec![]),
            ],
        );
        assert_eq!(
            names(&graph.build_tree("domain")),
            [
                "chrono",
                "domain",
                "iana-time-zone",
                "serde_core",
                "serde_derive",
                "serde_json"
            ]
        );
    }

    #[test]
    fn a_dependency_without_its_default_features_does_not_get_what_they_switch_on() {
        let graph = |default_features| {
            graph(
                &["domain"],
                vec![
                    (
                        "domain",
                        &[],
                        vec![Edge {
                            default_features,
                            ..on("chrono", Kind::Normal)
                        }],
                    ),
                    (
                        "chrono",
                        &[("default", &["clock"]), ("clock", &["dep:winapi"])],
                        vec![optional("winapi")],
                    ),
                    ("winapi", &[], vec![]),
                ],
            )
        };
        assert_eq!(
            names(&graph(false).build_tree("domain")),
            ["chrono", "domain"]
        );
        assert_eq!(
            names(&graph(true).build_tree("domain")),
            ["chrono", "domain", "winapi"]
        );
    }

    /// A workspace of `domain`, `runtime`, three adapters, a test-support
    /// crate and `app`, depending on each other as allowed, with `extra`
    /// edges added.
    fn workspace(extra: &[(&str, Kind, &str)]) -> Graph {
        let adapters = ["adapter-http", "adapter-memory", "adapter-auth"];
        let mut edges = Vec::new();
        for adapter in adapters {
            edges.push((adapter, Kind::Normal, "domain"));
            edges.push((adapter, Kind::Normal, "runtime"));
            edges.push(("app", Kind::Normal, adapter));
        }
        for to in RUNTIME {
            edges.push(("runtime", Kind::Normal, to));
        }
        edges.push(("app", Kind::Dev, "airflow-test-support"));
        edges.push(("adapter-http", Kind::Dev, "adapter-memory"));
        edges.extend_from_slice(extra);
        let members = ["domain", "runtime", "airflow-test-support", "app"];
        plain(&[&members[..], &adapters[..]].concat(), &edges)
    }

    /// What `runtime` may depend on in these tests.
    const RUNTIME: [&str; 3] = ["domain", "tokio", "chrono"];

    fn details(violations: &[Violation]) -> Vec<&str> {
        violations.iter().map(|v| v.detail.as_str()).collect()
    }

    #[test]
    fn the_allowed_workspace_breaks_no_rule() {
        let graph = workspace(&[]);
        assert_eq!(check_adapters(&graph), []);
        assert_eq!(check_runtime(&graph, "runtime", &RUNTIME), []);
        assert_eq!(check_test_support(&graph), []);
    }

    #[test]
    fn an_adapter_compiling_in_another_is_reported_whatever_its_name() {
        let graph = workspace(&[
            ("adapter-auth", Kind::Normal, "adapter-memory"),
            ("adapter-auth", Kind::Build, "adapter-http"),
        ]);
        let violations = check_adapters(&graph);
        assert_eq!(
            details(&violations),
            [
                "adapter-auth has `adapter-memory` in [dependencies]: an adapter must not depend on another adapter",
                "adapter-auth has `adapter-http` in [build-dependencies]: an adapter must not depend on another adapter",
            ]
        );
        assert_eq!(violations[0].file, "crates/adapter-auth/Cargo.toml");
    }

    #[test]
    fn only_app_may_depend_on_adapters() {
        for from in ["domain", "runtime"] {
            let graph = workspace(&[(from, Kind::Normal, "adapter-memory")]);
            assert_eq!(
                details(&check_adapters(&graph)),
                [format!(
                    "{from} has `adapter-memory` in [dependencies]: only app may depend on adapters"
                )]
            );
        }
    }

    #[test]
    fn runtime_depending_on_anything_but_domain_tokio_and_chrono_is_reported() {
        let graph = workspace(&[
            ("runtime", Kind::Normal, "adapter-memory"),
            ("runtime", Kind::Build, "reqwest"),
        ]);
        assert_eq!(
            details(&check_runtime(&graph, "runtime", &RUNTIME)),
            [
                "runtime has `adapter-memory` in [dependencies]; it may depend on domain, tokio, chrono only",
                "runtime has `reqwest` in [build-dependencies]; it may depend on domain, tokio, chrono only",
            ]
        );
    }

    #[test]
    fn a_test_support_crate_outside_dev_dependencies_is_reported() {
        let graph = workspace(&[("adapter-http", Kind::Normal, "airflow-test-support")]);
        assert_eq!(
            details(&check_test_support(&graph)),
            [
                "adapter-http has `airflow-test-support` in [dependencies]; move it to [dev-dependencies]"
            ]
        );
    }
}
