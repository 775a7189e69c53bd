//! The architecture's invariants, checked by `cargo test -p xtask` (and so
//! by `cargo test --workspace`) in the style of rust-analyzer's tidy
//! tests. Each failure names the manifest or file and the rule it breaks.
//!
//! The workspace's members and its dependency graph come from
//! `cargo metadata`, resolved for x86_64 Linux, the platform Maestro is
//! built and shipped on; how manifests are written, which the graph does
//! not show, is read from the manifests themselves.
//!
//! Architecture Invariant: `domain` compiles only the crates on
//! [`DOMAIN_ALLOWED`]: its whole tree of normal and build dependencies,
//! with the features a user of `domain` gets by default (not `mock` or
//! `testkit`). A web framework, HTTP client, async runtime or database
//! client pulled in at any depth fails the check, which names the chain
//! that pulled it in. Its tests may use what they like.
//!
//! Architecture Invariant: no `adapter-*` crate depends on another
//! `adapter-*` crate, and `app` is the only crate that depends on adapters
//! (normal and build dependencies; tests may use any crate).
//!
//! Architecture Invariant: `runtime`, what the adapters and the binary
//! share on tokio, is not an adapter: any crate may depend on it, and it
//! depends only on `domain`, tokio, chrono, async-trait and tracing.
//!
//! Architecture Invariant: a `*-test-support` crate (such as
//! `airflow-test-support`) is only ever a dev-dependency.
//!
//! Architecture Invariant: every member of the workspace inherits every
//! `[workspace.package]` field (at least `version.workspace = true` and
//! `edition.workspace = true`) and has `[lints] workspace = true`.
//!
//! Architecture Invariant: every dependency of every member is declared
//! once, in the root `[workspace.dependencies]`, and used as
//! `name.workspace = true`, adding at most `features` or `optional`.
//!
//! Architecture Invariant: every `.rs` file of every member (its folder,
//! and the folders of targets outside it, like `tests/api`) starts with a
//! `//!` line saying what it is for.
//!
//! Architecture Invariant: the domain speaks the language of pipelines
//! only: no HTTP status, header, route or engine name (Airflow, DAG) in
//! `crates/domain/src`. The words clients see are the adapters'.
//!
//! Architecture Invariant: one clock. Only `domain::SystemClock` and
//! `runtime::TokioClock` read the wall clock; the rest of the code reads
//! "now" through a `domain::Clock` and waits on tokio's timers. The
//! system's monotonic clock (`std::time::Instant`) is read only to measure
//! latencies for metrics and logs.

use std::{
    collections::BTreeSet,
    fmt, fs,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use cargo_metadata::{Metadata, MetadataCommand};
use toml::{Table, Value};

mod graph;
mod manifest;

use graph::Graph;
use manifest::Manifest;

/// The platform the dependency graph is resolved for: what Maestro is
/// built and shipped on. Crates only other platforms compile (Windows
/// APIs, wasm bindings) are left out of the graph.
const PLATFORM: &str = "x86_64-unknown-linux-gnu";

/// Everything `domain` may compile, by package name: its own normal
/// dependencies and theirs, as resolved with its default features. A crate
/// joins this list only when it does no I/O and needs no runtime.
const DOMAIN_ALLOWED: &[&str] = &[
    // `domain`'s own dependencies.
    "async-trait",
    "chrono",
    "serde",
    "serde_json",
    "thiserror",
    "unicode-properties",
    // chrono's, with the `clock` and `std` features.
    "iana-time-zone",
    "num-traits",
    "autocfg",
    // serde_json's.
    "itoa",
    "memchr",
    "serde_core",
    "zmij",
    // serde's derive, for the idempotency records the domain writes.
    "serde_derive",
    // sha2 and its tree, for the digest of run parameters in an
    // idempotency fingerprint.
    "sha2",
    "digest",
    "block-buffer",
    "crypto-common",
    "generic-array",
    "typenum",
    "version_check",
    "cpufeatures",
    "cfg-if",
    // The derive macros behind async-trait and thiserror.
    "thiserror-impl",
    "proc-macro2",
    "quote",
    "syn",
    "unicode-ident",
];

/// All that `runtime` may depend on.
const RUNTIME_ALLOWED: &[&str] = &["domain", "tokio", "chrono", "async-trait", "tracing"];

/// One broken rule in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    file: String,
    rule: &'static str,
    detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: breaks \"{}\": {}",
            self.file, self.rule, self.detail
        )
    }
}

/// `path` relative to `root`, with `/` separators, for messages.
fn relative(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .components()
        .map(|component| component.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

// The workspace on disk.

fn project_root() -> PathBuf {
    crate::project_root()
}

/// `cargo metadata` of the workspace, run once per test binary.
fn metadata() -> &'static Metadata {
    static METADATA: OnceLock<Metadata> = OnceLock::new();
    METADATA.get_or_init(|| {
        MetadataCommand::new()
            .manifest_path(project_root().join("Cargo.toml"))
            .other_options(vec!["--filter-platform".to_owned(), PLATFORM.to_owned()])
            .exec()
            .unwrap_or_else(|err| panic!("cargo metadata failed: {err}"))
    })
}

fn workspace_graph() -> Graph {
    Graph::from_metadata(metadata(), &project_root())
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

fn root_manifest() -> Table {
    let path = project_root().join("Cargo.toml");
    read(&path)
        .parse()
        .unwrap_or_else(|err| panic!("Cargo.toml is not valid TOML: {err}"))
}

fn workspace_table(root: &Table, key: &str) -> Table {
    root.get("workspace")
        .and_then(|workspace| workspace.get(key))
        .and_then(Value::as_table)
        .cloned()
        .unwrap_or_default()
}

/// The manifest of every member of the workspace, as `cargo metadata`
/// lists them, so that a new crate is checked wherever it lives.
fn workspace_manifests() -> Vec<Manifest> {
    let root = project_root();
    metadata()
        .workspace_packages()
        .iter()
        .map(|package| {
            let path = package.manifest_path.as_std_path();
            Manifest::parse(&relative(&root, path), &read(path))
        })
        .collect()
}

/// The folders of the members' sources: each member's own, and those of
/// its targets that live elsewhere (`app` declares the tests in
/// `tests/api`), without one inside another.
fn source_folders() -> Vec<PathBuf> {
    let mut folders = BTreeSet::new();
    for package in metadata().workspace_packages() {
        let manifest = std::iter::once(&package.manifest_path);
        let targets = package.targets.iter().map(|target| &target.src_path);
        for file in manifest.chain(targets) {
            // Canonical, since a target's path may climb out of its crate
            // (`crates/app/../../tests/api/main.rs`).
            let folder = file.parent().and_then(|folder| folder.canonicalize().ok());
            folders.extend(folder);
        }
    }
    folders
        .iter()
        .filter(|folder| {
            !folders
                .iter()
                .any(|other| other != *folder && folder.starts_with(other))
        })
        .cloned()
        .collect()
}

/// Every `.rs` file below `dir`, skipping build output and hidden folders.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry
            .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
            .path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, found);
            }
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

fn assert_none(violations: Vec<Violation>) {
    let report: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(report.is_empty(), "\n{}\n", report.join("\n"));
}

fn check_every_manifest(check: impl Fn(&Manifest) -> Vec<Violation>) -> Vec<Violation> {
    workspace_manifests().iter().flat_map(check).collect()
}

#[test]
fn domain_compiles_only_the_crates_on_its_allow_list() {
    assert_none(graph::check_build_tree(
        &workspace_graph(),
        "domain",
        DOMAIN_ALLOWED,
    ));
}

#[test]
fn domains_tree_is_what_a_user_of_domain_gets_by_default() {
    let graph = workspace_graph();
    let (id, _) = graph.member("domain").expect("a domain crate");
    let names: BTreeSet<String> = graph
        .build_tree(id)
        .into_values()
        .filter_map(|path| path.last().cloned())
        .collect();
    for expected in ["domain", "chrono", "serde_json", "thiserror"] {
        assert!(names.contains(expected), "{expected} not in {names:?}");
    }
    // adapter-http's tests turn on domain's `mock` feature, so the
    // workspace's resolve has mockall under domain; a user of domain does
    // not get it.
    assert!(!names.contains("mockall"), "{names:?}");
}

#[test]
fn no_adapter_depends_on_another_and_only_app_depends_on_adapters() {
    assert_none(graph::check_adapters(&workspace_graph()));
}

#[test]
fn runtime_depends_only_on_domain_and_tokio_side_crates() {
    assert_none(graph::check_runtime(
        &workspace_graph(),
        "runtime",
        RUNTIME_ALLOWED,
    ));
}

#[test]
fn test_support_crates_are_only_dev_dependencies() {
    assert_none(graph::check_test_support(&workspace_graph()));
}

#[test]
fn every_crate_inherits_the_workspace_package_fields_and_lints() {
    let package = workspace_table(&root_manifest(), "package");
    assert_none(check_every_manifest(|manifest| {
        let mut violations = manifest::check_package_fields(manifest, &package);
        violations.extend(manifest::check_lints(manifest));
        violations
    }));
}

#[test]
fn every_dependency_is_declared_once_in_the_workspace() {
    assert_none(check_every_manifest(manifest::check_dependencies));
}

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    let root = project_root()
        .canonicalize()
        .expect("the workspace root exists");
    let mut files = Vec::new();
    for folder in source_folders() {
        rust_files(&folder, &mut files);
    }
    for expected in ["xtask/src/tidy.rs", "tests/api/main.rs"] {
        assert!(
            files.iter().any(|file| file.ends_with(expected)),
            "the walk did not find {expected}"
        );
    }
    assert_none(
        files
            .iter()
            .filter_map(|file| manifest::check_module_doc(&relative(&root, file), &read(file)))
            .collect(),
    );
}

/// Every `.rs` file under `crates/*/src`, relative to the root, with its
/// text.
fn crate_sources() -> Vec<(String, String)> {
    let root = project_root()
        .canonicalize()
        .expect("the workspace root exists");
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    files
        .into_iter()
        .map(|file| (relative(&root, &file), file))
        .filter(|(name, _)| name.split('/').nth(2) == Some("src"))
        .map(|(name, file)| (name, read(&file)))
        .collect()
}

/// The lines of `text` outside comments that hold one of `words`.
fn code_lines_with<'a>(text: &'a str, words: &[&str]) -> Vec<(usize, &'a str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter(|(_, line)| words.iter().any(|word| line.contains(word)))
        .map(|(index, line)| (index + 1, line.trim()))
        .collect()
}

#[test]
fn the_domain_speaks_only_of_pipelines() {
    const FOREIGN: &[&str] = &[
        "StatusCode",
        "status code",
        "header",
        "/pipeline/",
        "Airflow",
        "DAG",
        "HTTP",
    ];
    let sources = crate_sources();
    assert!(
        sources
            .iter()
            .any(|(name, _)| name == "crates/domain/src/lib.rs")
    );
    let violations: Vec<Violation> = sources
        .iter()
        .filter(|(name, _)| name.starts_with("crates/domain/src/"))
        .flat_map(|(name, text)| {
            // Doc comments count too: they are the domain's words.
            text.lines().enumerate().filter_map(move |(index, line)| {
                let word = FOREIGN.iter().find(|word| line.contains(**word))?;
                // The crate's own description of what it is not.
                if line.contains("knows no web framework, HTTP client") {
                    return None;
                }
                Some(Violation {
                    file: name.clone(),
                    rule: "the domain speaks the language of pipelines only",
                    detail: format!("line {} says {word:?}: {}", index + 1, line.trim()),
                })
            })
        })
        .collect();
    assert_none(violations);
}

#[test]
fn only_the_clocks_read_the_time() {
    // Where each reading is allowed, and why.
    const WALL: &[&str] = &["Utc::now", "SystemTime", "Local::now"];
    const WALL_READERS: &[&str] = &[
        "crates/domain/src/clock.rs", // SystemClock
        "crates/runtime/src/lib.rs",  // TokioClock
        // The log lines' instants, read where the log's default timer did.
        "crates/app/src/log_time.rs",
    ];
    const MONOTONIC: &[&str] = &[
        "std::time::Instant",
        "time::{Duration, Instant}",
        "time::Instant}",
    ];
    const LATENCY_MEASURERS: &[&str] = &[
        "crates/adapter-http/src/observe.rs",
        "crates/adapter-http/src/instrument.rs",
    ];
    let sources = crate_sources();
    let mut violations = Vec::new();
    for (name, text) in &sources {
        if name.contains("-test-support/") {
            continue;
        }
        if !WALL_READERS.contains(&name.as_str()) {
            for (line, code) in code_lines_with(text, WALL) {
                violations.push(Violation {
                    file: name.clone(),
                    rule: "one clock",
                    detail: format!("line {line} reads the wall clock: {code}"),
                });
            }
        }
        if !LATENCY_MEASURERS.contains(&name.as_str()) && !name.starts_with("crates/runtime/") {
            for (line, code) in code_lines_with(text, MONOTONIC) {
                // tokio's `Instant` is the runtime's clock, paused in tests.
                if code.contains("tokio") {
                    continue;
                }
                violations.push(Violation {
                    file: name.clone(),
                    rule: "one clock",
                    detail: format!("line {line} uses std's Instant: {code}"),
                });
            }
        }
    }
    assert_none(violations);
}

#[test]
fn the_source_checks_catch_what_they_look_for() {
    let text = "// Utc::now in a comment\nlet now = Utc::now();\nuse std::time::Instant;\n";
    assert_eq!(
        code_lines_with(text, &["Utc::now"]),
        [(2, "let now = Utc::now();")]
    );
    assert_eq!(code_lines_with(text, &["std::time::Instant"]).len(), 1);
}

#[test]
fn the_checks_see_every_kind_of_member() {
    let names: Vec<String> = metadata()
        .workspace_packages()
        .iter()
        .map(|package| package.name.to_string())
        .collect();
    for expected in ["domain", "runtime", "app", "xtask"] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} not found in {names:?}"
        );
    }
    assert!(
        names.iter().any(|name| name.starts_with("adapter-")),
        "no adapter found in {names:?}"
    );
    assert!(
        names.iter().any(|name| name.ends_with("-test-support")),
        "no test-support crate found in {names:?}"
    );
    assert_eq!(
        workspace_manifests().len(),
        names.len(),
        "every member's manifest is read"
    );
}
