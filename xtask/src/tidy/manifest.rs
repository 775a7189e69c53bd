//! The rules about how manifests and source files are written, which
//! `cargo metadata` does not show: the inheritance of the workspace's
//! package fields, lints and dependencies, and the `//!` line that opens
//! every Rust file.

use toml::{Table, Value};

use super::Violation;

/// Dependency sections of a manifest, besides their `target.<cfg>.` forms.
const DEPENDENCY_SECTIONS: &[&str] = &["dependencies", "dev-dependencies", "build-dependencies"];

/// Keys a `workspace = true` dependency may add; anything else (a version,
/// a path, a rename, `default-features`) belongs in the root.
const KEYS_BESIDE_WORKSPACE: &[&str] = &["workspace", "features", "optional"];

/// Fields every crate must inherit even if the root stopped listing them.
const ALWAYS_INHERITED: &[&str] = &["version", "edition"];

const RULE_PACKAGE: &str = "every crate inherits the [workspace.package] fields";
const RULE_LINTS: &str = "every crate has `[lints] workspace = true`";
const RULE_DEPENDENCIES: &str = "every dependency is declared once in [workspace.dependencies] and used with `workspace = true`";
const RULE_MODULE_DOC: &str = "every .rs file starts with a `//!` line";

/// A crate's manifest, parsed, with the path messages name it by.
#[derive(Debug)]
pub(super) struct Manifest {
    file: String,
    table: Table,
}

impl Manifest {
    /// Parses `text`, the manifest at `file`.
    pub(super) fn parse(file: &str, text: &str) -> Self {
        let table: Table = text
            .parse()
            .unwrap_or_else(|err| panic!("{file} is not valid TOML: {err}"));
        Self {
            file: file.to_owned(),
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
    key: String,
    spec: Value,
}

fn inherits_workspace(value: Option<&Value>) -> bool {
    value.and_then(Value::as_table).is_some_and(|table| {
        table.len() == 1 && table.get("workspace") == Some(&Value::Boolean(true))
    })
}

pub(super) fn check_package_fields(
    manifest: &Manifest,
    workspace_package: &Table,
) -> Vec<Violation> {
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

pub(super) fn check_lints(manifest: &Manifest) -> Vec<Violation> {
    if inherits_workspace(manifest.table.get("lints")) {
        return Vec::new();
    }
    vec![manifest.violation(
        RULE_LINTS,
        "needs a `[lints]` table with exactly `workspace = true`".to_owned(),
    )]
}

pub(super) fn check_dependencies(manifest: &Manifest) -> Vec<Violation> {
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

pub(super) fn check_module_doc(file: &str, text: &str) -> Option<Violation> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut violations = check_package_fields(&manifest, &package);
        violations.extend(check_lints(&manifest));
        violations.extend(check_dependencies(&manifest));
        assert_eq!(violations, []);
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
        let violation = check_module_doc("crates/x/src/b.rs", "/// An item doc.\nfn f() {}\n")
            .expect("reported");
        assert_eq!(violation.file, "crates/x/src/b.rs");
        assert_eq!(violation.rule, RULE_MODULE_DOC);
        assert!(check_module_doc("c.rs", "\n//! Too late.\n").is_some());
        assert!(check_module_doc("d.rs", "").is_some());
    }
}
