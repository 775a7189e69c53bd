//! The architecture's invariants, checked by `cargo test -p xtask` in the
//! style of rust-analyzer's tidy tests. Each failure names the file and the
//! rule it breaks.
//!
//! Architecture Invariant: `domain` depends on no web framework, HTTP client
//! or server, async runtime, or database or cache client (axum, hyper,
//! reqwest, tower, tokio, async-std, actix, warp, wiremock, redis, sqlx and
//! the like) among its normal dependencies; its tests may use them.
//!
//! Architecture Invariant: no `adapter-*` crate depends on another
//! `adapter-*` crate, in any dependency section; `app` is the only crate
//! that depends on adapters.
//!
//! Architecture Invariant: every crate under `crates/`, and `xtask`,
//! inherits every `[workspace.package]` field (at least
//! `version.workspace = true` and `edition.workspace = true`) and has
//! `[lints] workspace = true`.
//!
//! Architecture Invariant: every dependency of every crate is declared once,
//! in the root `[workspace.dependencies]`, and used as
//! `name.workspace = true`, adding at most `features` or `optional`.
//!
//! Architecture Invariant: every `.rs` file under `crates/`, `xtask/` and
//! `tests/` starts with a `//!` line saying what it is for.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use toml::{Table, Value};

/// Crate families `domain` must not depend on, matched by name and by
/// `name-*` (`tokio` also catches `tokio-util`, `actix` `actix-web`).
const FORBIDDEN_IN_DOMAIN: &[&str] = &[
    // Web frameworks and HTTP servers.
    "actix",
    "axum",
    "poem",
    "rocket",
    "salvo",
    "tide",
    "tower",
    "warp",
    // HTTP clients and protocols, and HTTP test servers.
    "curl",
    "h2",
    "hyper",
    "isahc",
    "reqwest",
    "surf",
    "ureq",
    "wiremock",
    // Async runtimes and their I/O.
    "async-io",
    "async-std",
    "mio",
    "smol",
    "tokio",
    // Databases, caches and message brokers.
    "bb8",
    "deadpool",
    "diesel",
    "fred",
    "lapin",
    "mongodb",
    "rdkafka",
    "redis",
    "sea-orm",
    "sqlx",
    "tonic",
];

/// Dependency sections of a manifest, besides their `target.<cfg>.` forms.
const DEPENDENCY_SECTIONS: &[&str] = &["dependencies", "dev-dependencies", "build-dependencies"];

/// Keys a `workspace = true` dependency may add; anything else (a version,
/// a path, a rename, `default-features`) belongs in the root.
const KEYS_BESIDE_WORKSPACE: &[&str] = &["workspace", "features", "optional"];

/// Fields every crate must inherit even if the root stopped listing them.
const ALWAYS_INHERITED: &[&str] = &["version", "edition"];

/// The crates of the workspace allowed to depend on adapters.
const ADAPTER_USERS: &[&str] = &["app"];

const RULE_DOMAIN: &str =
    "domain depends on no web framework, HTTP client, runtime or database client";
const RULE_ADAPTERS: &str =
    "no adapter depends on another adapter, and only app depends on adapters";
const RULE_PACKAGE: &str = "every crate inherits the [workspace.package] fields";
const RULE_LINTS: &str = "every crate has `[lints] workspace = true`";
const RULE_DEPENDENCIES: &str = "every dependency is declared once in [workspace.dependencies] and used with `workspace = true`";
const RULE_MODULE_DOC: &str = "every .rs file starts with a `//!` line";

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

/// A crate's manifest, parsed, with the path messages name it by.
#[derive(Debug)]
struct Manifest {
    file: String,
    name: String,
    table: Table,
}

impl Manifest {
    fn parse(file: &str, text: &str) -> Self {
        let table: Table = text
            .parse()
            .unwrap_or_else(|err| panic!("{file} is not valid TOML: {err}"));
        let name = table
            .get("package")
            .and_then(|package| package.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{file} has no [package] name"))
            .to_owned();
        Self {
            file: file.to_owned(),
            name,
            table,
        }
    }

    fn violation(&self, rule: &'static str, detail: String) -> Violation {
        Violation {
            file: self.file.clone(),
            rule,
            detail,
        }
    }

    /// Every dependency in every section, including `target.<cfg>.` ones.
    fn dependencies(&self) -> Vec<Dependency> {
        let mut found = Vec::new();
        let mut collect = |prefix: String, table: &'_ Table| {
            for section in DEPENDENCY_SECTIONS {
                let Some(entries) = table.get(*section).and_then(Value::as_table) else {
                    continue;
                };
                // Sorted, so that reports read the same whatever order the
                // TOML map keeps.
                let mut entries: Vec<_> = entries.iter().collect();
                entries.sort_by_key(|(key, _)| *key);
                for (key, spec) in entries {
                    found.push(Dependency {
                        section: format!("{prefix}{section}"),
                        normal: *section == "dependencies",
                        key: key.clone(),
                        spec: spec.clone(),
                    });
                }
            }
        };
        collect(String::new(), &self.table);
        if let Some(targets) = self.table.get("target").and_then(Value::as_table) {
            for (cfg, table) in targets {
                if let Some(table) = table.as_table() {
                    collect(format!("target.'{cfg}'."), table);
                }
            }
        }
        found
    }
}

/// One dependency as written.
#[derive(Debug)]
struct Dependency {
    section: String,
    /// In `[dependencies]` (possibly under a target), not dev or build.
    normal: bool,
    key: String,
    spec: Value,
}

/// The package a dependency really names: its key, unless renamed with
/// `package = "..."` here or in the root's `[workspace.dependencies]`.
fn package_of(dependency: &Dependency, workspace_dependencies: &Table) -> String {
    let renamed = |spec: &Value| {
        spec.get("package")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    renamed(&dependency.spec)
        .or_else(|| {
            let inherited = dependency.spec.get("workspace").and_then(Value::as_bool) == Some(true);
            inherited
                .then(|| workspace_dependencies.get(&dependency.key))
                .flatten()
                .and_then(renamed)
        })
        .unwrap_or_else(|| dependency.key.clone())
}

fn in_family(package: &str, family: &str) -> bool {
    package == family
        || package
            .strip_prefix(family)
            .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('_'))
}

fn is_adapter(package: &str) -> bool {
    package.starts_with("adapter-")
}

fn check_domain(manifest: &Manifest, workspace_dependencies: &Table) -> Vec<Violation> {
    if manifest.name != "domain" {
        return Vec::new();
    }
    manifest
        .dependencies()
        .iter()
        .filter(|dependency| dependency.normal)
        .filter_map(|dependency| {
            let package = package_of(dependency, workspace_dependencies);
            let family = FORBIDDEN_IN_DOMAIN
                .iter()
                .find(|family| in_family(&package, family))?;
            Some(manifest.violation(
                RULE_DOMAIN,
                format!(
                    "[{}] has `{}` (the `{family}` family); move it to an adapter",
                    dependency.section, dependency.key
                ),
            ))
        })
        .collect()
}

fn check_adapters(manifest: &Manifest, workspace_dependencies: &Table) -> Vec<Violation> {
    if ADAPTER_USERS.contains(&manifest.name.as_str()) {
        return Vec::new();
    }
    manifest
        .dependencies()
        .iter()
        .filter_map(|dependency| {
            let package = package_of(dependency, workspace_dependencies);
            if !is_adapter(&package) {
                return None;
            }
            // The domain's crate documentation runs a use case over the
            // in-memory backend, as a doctest: a dev-dependency only, which
            // no user of the domain ever builds.
            if manifest.name == "domain"
                && package == "adapter-memory"
                && dependency.section == "dev-dependencies"
            {
                return None;
            }
            let why = if is_adapter(&manifest.name) {
                "an adapter must not depend on another adapter"
            } else {
                "only app may depend on adapters"
            };
            Some(manifest.violation(
                RULE_ADAPTERS,
                format!(
                    "{} has `{package}` in [{}]: {why}",
                    manifest.name, dependency.section
                ),
            ))
        })
        .collect()
}

fn inherits_workspace(value: Option<&Value>) -> bool {
    value.and_then(Value::as_table).is_some_and(|table| {
        table.len() == 1 && table.get("workspace") == Some(&Value::Boolean(true))
    })
}

fn check_package_fields(manifest: &Manifest, workspace_package: &Table) -> Vec<Violation> {
    let package = manifest.table.get("package");
    let mut others: Vec<&str> = workspace_package
        .keys()
        .map(String::as_str)
        .filter(|field| !ALWAYS_INHERITED.contains(field))
        .collect();
    others.sort_unstable();
    let mut fields: Vec<&str> = ALWAYS_INHERITED.to_vec();
    fields.extend(others);
    fields
        .into_iter()
        .filter(|field| !inherits_workspace(package.and_then(|package| package.get(*field))))
        .map(|field| {
            manifest.violation(
                RULE_PACKAGE,
                format!("[package] needs `{field}.workspace = true`"),
            )
        })
        .collect()
}

fn check_lints(manifest: &Manifest) -> Vec<Violation> {
    if inherits_workspace(manifest.table.get("lints")) {
        return Vec::new();
    }
    vec![manifest.violation(
        RULE_LINTS,
        "needs a `[lints]` table with exactly `workspace = true`".to_owned(),
    )]
}

fn check_dependencies(manifest: &Manifest) -> Vec<Violation> {
    manifest
        .dependencies()
        .iter()
        .filter_map(|dependency| {
            let problem = match dependency.spec.as_table() {
                None => "is written with its own version".to_owned(),
                Some(spec) if spec.get("workspace") != Some(&Value::Boolean(true)) => {
                    "lacks `workspace = true`".to_owned()
                }
                Some(spec) => {
                    let extra: Vec<&str> = spec
                        .keys()
                        .map(String::as_str)
                        .filter(|key| !KEYS_BESIDE_WORKSPACE.contains(key))
                        .collect();
                    if extra.is_empty() {
                        return None;
                    }
                    format!(
                        "sets {} here; declare that in the root [workspace.dependencies]",
                        extra.join(", ")
                    )
                }
            };
            Some(manifest.violation(
                RULE_DEPENDENCIES,
                format!("`{}` in [{}] {problem}", dependency.key, dependency.section),
            ))
        })
        .collect()
}

fn check_module_doc(file: &str, text: &str) -> Option<Violation> {
    let first = text.lines().next().unwrap_or_default();
    if first.starts_with("//!") {
        return None;
    }
    Some(Violation {
        file: file.to_owned(),
        rule: RULE_MODULE_DOC,
        detail: format!("the first line is {first:?}"),
    })
}

// The workspace on disk.

fn project_root() -> PathBuf {
    crate::project_root()
}

/// `path` relative to the root, with `/` separators, for messages.
fn relative(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .components()
        .map(|component| component.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
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

/// Every crate under `crates/`, found afresh on each run so that new crates
/// are checked without touching this file, and `xtask`.
fn workspace_manifests() -> Vec<Manifest> {
    let root = project_root();
    let mut paths: Vec<PathBuf> = fs::read_dir(root.join("crates"))
        .unwrap_or_else(|err| panic!("cannot list crates/: {err}"))
        .map(|entry| {
            entry
                .unwrap_or_else(|err| panic!("cannot list crates/: {err}"))
                .path()
        })
        .map(|dir| dir.join("Cargo.toml"))
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    paths.push(root.join("xtask").join("Cargo.toml"));
    paths
        .iter()
        .map(|path| Manifest::parse(&relative(&root, path), &read(path)))
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
fn domain_depends_on_no_web_framework_http_client_or_runtime() {
    let dependencies = workspace_table(&root_manifest(), "dependencies");
    assert_none(check_every_manifest(|manifest| {
        check_domain(manifest, &dependencies)
    }));
}

#[test]
fn no_adapter_depends_on_another_and_only_app_depends_on_adapters() {
    let dependencies = workspace_table(&root_manifest(), "dependencies");
    assert_none(check_every_manifest(|manifest| {
        check_adapters(manifest, &dependencies)
    }));
}

#[test]
fn every_crate_inherits_the_workspace_package_fields_and_lints() {
    let package = workspace_table(&root_manifest(), "package");
    assert_none(check_every_manifest(|manifest| {
        let mut violations = check_package_fields(manifest, &package);
        violations.extend(check_lints(manifest));
        violations
    }));
}

#[test]
fn every_dependency_is_declared_once_in_the_workspace() {
    assert_none(check_every_manifest(check_dependencies));
}

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    let root = project_root();
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.iter().any(|file| file.ends_with("xtask/src/tidy.rs")),
        "the walk found no .rs files where this one is"
    );
    assert_none(
        files
            .iter()
            .filter_map(|file| check_module_doc(&relative(&root, file), &read(file)))
            .collect(),
    );
}

#[test]
fn the_checks_cover_every_member_of_the_workspace() {
    let names: Vec<String> = workspace_manifests()
        .into_iter()
        .map(|manifest| manifest.name)
        .collect();
    for expected in ["domain", "app", "xtask"] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} not found in {names:?}"
        );
    }
    assert!(
        names.iter().any(|name| is_adapter(name)),
        "no adapter found in {names:?}"
    );
    // A member outside `crates/*` and `xtask` would escape every check above.
    let members = root_manifest()
        .get("workspace")
        .and_then(|workspace| workspace.get("members"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for member in &members {
        let member = member.as_str().unwrap_or_default();
        assert!(
            member == "crates/*" || member == "xtask",
            "Cargo.toml: workspace member {member:?} is outside crates/* and xtask, so tidy.rs does not check it"
        );
    }
}

// The rules themselves, on manifests made up to break them.

fn manifest(text: &str) -> Manifest {
    Manifest::parse("crates/example/Cargo.toml", text)
}

fn workspace_dependencies(text: &str) -> Table {
    text.parse().expect("valid TOML")
}

const GOOD: &str = r#"
[package]
name = "adapter-example"
version.workspace = true
edition.workspace = true

[dependencies]
domain.workspace = true
serde = { workspace = true, features = ["derive"] }

[lints]
workspace = true
"#;

#[test]
fn a_well_formed_adapter_breaks_no_rule() {
    let manifest = manifest(GOOD);
    let package = workspace_dependencies("version = \"0.1.0\"\nedition = \"2024\"");
    let mut violations = check_adapters(&manifest, &Table::new());
    violations.extend(check_package_fields(&manifest, &package));
    violations.extend(check_lints(&manifest));
    violations.extend(check_dependencies(&manifest));
    assert_eq!(violations, []);
}

#[test]
fn a_runtime_or_web_framework_in_domain_is_reported_but_not_in_its_tests() {
    let manifest = manifest(
        r#"
[package]
name = "domain"
[dependencies]
chrono.workspace = true
tokio-util.workspace = true
web = { workspace = true }
[target.'cfg(unix)'.dependencies]
hyper.workspace = true
[dev-dependencies]
tokio.workspace = true
"#,
    );
    let renames = workspace_dependencies(r#"web = { package = "axum", version = "0.8" }"#);
    let violations = check_domain(&manifest, &renames);
    let details: Vec<&str> = violations.iter().map(|v| v.detail.as_str()).collect();
    assert_eq!(
        details,
        [
            "[dependencies] has `tokio-util` (the `tokio` family); move it to an adapter",
            "[dependencies] has `web` (the `axum` family); move it to an adapter",
            "[target.'cfg(unix)'.dependencies] has `hyper` (the `hyper` family); move it to an adapter",
        ]
    );
    assert!(
        violations
            .iter()
            .all(|v| v.file == "crates/example/Cargo.toml")
    );
    assert!(violations[0].to_string().contains(RULE_DOMAIN));
}

#[test]
fn crate_names_that_only_share_a_prefix_are_not_a_family() {
    assert!(in_family("tokio", "tokio"));
    assert!(in_family("tokio-util", "tokio"));
    assert!(in_family("actix-web", "actix"));
    assert!(!in_family("towering", "tower"));
    assert!(!in_family("h2o", "h2"));
}

#[test]
fn an_adapter_depending_on_another_is_reported_in_any_section() {
    let manifest = manifest(
        r#"
[package]
name = "adapter-http"
[dependencies]
domain.workspace = true
[dev-dependencies]
adapter-memory.workspace = true
[build-dependencies]
memory = { workspace = true }
"#,
    );
    let renames = workspace_dependencies(r#"memory = { package = "adapter-memory", path = "x" }"#);
    let violations = check_adapters(&manifest, &renames);
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(violations[0].detail.contains("[dev-dependencies]"));
    assert!(violations[1].detail.contains("[build-dependencies]"));
    assert!(
        violations[0]
            .detail
            .contains("an adapter must not depend on another adapter")
    );
}

#[test]
fn only_app_may_depend_on_adapters() {
    let text = "[package]\nname = \"NAME\"\n[dependencies]\nadapter-memory.workspace = true\n";
    let app = manifest(&text.replace("NAME", "app"));
    assert_eq!(check_adapters(&app, &Table::new()), []);
    let domain = manifest(&text.replace("NAME", "domain"));
    let violations = check_adapters(&domain, &Table::new());
    assert_eq!(violations.len(), 1);
    assert!(
        violations[0]
            .detail
            .contains("only app may depend on adapters")
    );
}

#[test]
fn missing_workspace_fields_and_lints_are_reported() {
    let manifest = manifest(
        r#"
[package]
name = "adapter-example"
version = "0.2.0"
edition.workspace = true
[lints.rust]
unsafe_code = "forbid"
"#,
    );
    let package =
        workspace_dependencies("version = \"0.1.0\"\nedition = \"2024\"\npublish = false");
    let details: Vec<String> = check_package_fields(&manifest, &package)
        .into_iter()
        .map(|violation| violation.detail)
        .collect();
    assert_eq!(
        details,
        [
            "[package] needs `version.workspace = true`",
            "[package] needs `publish.workspace = true`",
        ]
    );
    assert_eq!(check_lints(&manifest).len(), 1);
}

#[test]
fn a_dependency_not_taken_from_the_workspace_is_reported() {
    let manifest = manifest(
        r#"
[package]
name = "adapter-example"
[dependencies]
serde = "1"
anyhow = { version = "1" }
tokio = { workspace = true, default-features = false }
thiserror = { workspace = true, optional = true }
[target.'cfg(windows)'.dev-dependencies]
local = { path = "../local" }
"#,
    );
    let details: Vec<String> = check_dependencies(&manifest)
        .into_iter()
        .map(|violation| violation.detail)
        .collect();
    assert_eq!(
        details,
        [
            "`anyhow` in [dependencies] lacks `workspace = true`",
            "`serde` in [dependencies] is written with its own version",
            "`tokio` in [dependencies] sets default-features here; declare that in the root [workspace.dependencies]",
            "`local` in [target.'cfg(windows)'.dev-dependencies] lacks `workspace = true`",
        ]
    );
}

#[test]
fn a_file_without_a_leading_module_doc_line_is_reported() {
    assert_eq!(
        check_module_doc("a.rs", "//! What this is for.\nfn main() {}\n"),
        None
    );
    let violation =
        check_module_doc("crates/x/src/b.rs", "/// An item doc.\nfn f() {}\n").expect("reported");
    assert_eq!(violation.file, "crates/x/src/b.rs");
    assert_eq!(violation.rule, RULE_MODULE_DOC);
    assert!(check_module_doc("c.rs", "\n//! Too late.\n").is_some());
    assert!(check_module_doc("d.rs", "").is_some());
}
