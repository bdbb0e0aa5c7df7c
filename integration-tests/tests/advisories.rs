//! Known security advisories against `Cargo.lock`, audited offline with the `rustsec`
//! library (what `cargo audit` runs) and the snapshot of the RustSec database in
//! `.ci/advisory-db`: CI has no route to github.com, where the database lives. The
//! snapshot holds every advisory of every crate in `Cargo.lock` when it was taken;
//! `.ci/advisories.sh <checkout of rustsec/advisory-db>` takes a new one, and must when
//! `Cargo.lock` gains a crate (the first test says so). `make audit` runs `cargo audit`
//! against the live database where github.com is reachable.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustsec::advisory::Informational;
use rustsec::report::{Report, Settings};
use rustsec::{Database, Lockfile};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn snapshot() -> PathBuf {
    workspace().join(".ci/advisory-db")
}

/// Informational advisories (unmaintained, unsound, notices) that were read and judged
/// harmless here, with why; any other one fails the audit until someone does the same.
const ACKNOWLEDGED: &[(&str, &str)] = &[
    (
        "RUSTSEC-2025-0057",
        "fxhash is unmaintained; only sled 0.34 uses it, as a hash for its own maps",
    ),
    (
        "RUSTSEC-2024-0384",
        "instant is unmaintained; only sled 0.34 (through parking_lot 0.11) uses it, \
         and on Linux it is std::time::Instant",
    ),
];

fn audit(lockfile: &Lockfile) -> Report {
    let database = Database::open(&snapshot()).expect("the advisory snapshot opens");
    let settings = Settings {
        informational_warnings: vec![
            Informational::Unmaintained,
            Informational::Unsound,
            Informational::Notice,
        ],
        ..Settings::default()
    };
    Report::generate(&database, lockfile, &settings)
}

fn found(report: &Report) -> Vec<String> {
    report
        .vulnerabilities
        .list
        .iter()
        .map(|v| {
            format!(
                "{} {} {}: {}",
                v.advisory.id, v.package.name, v.package.version, v.advisory.title
            )
        })
        .collect()
}

#[test]
fn no_crate_in_cargo_lock_has_a_known_vulnerability() {
    let lockfile = Lockfile::load(workspace().join("Cargo.lock")).unwrap();
    let covered: BTreeSet<String> = std::fs::read_to_string(snapshot().join("crates.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let uncovered: BTreeSet<&str> = lockfile
        .packages
        .iter()
        .map(|package| package.name.as_str())
        .filter(|name| !covered.contains(*name))
        .collect();
    assert!(
        uncovered.is_empty(),
        "Cargo.lock has crates the advisory snapshot was not taken for: {uncovered:?}; \
         take a new one with .ci/advisories.sh <checkout of rustsec/advisory-db>"
    );

    let report = audit(&lockfile);
    let vulnerable = found(&report);
    assert!(
        vulnerable.is_empty(),
        "known vulnerabilities: {vulnerable:#?}"
    );
    let mut unacknowledged = Vec::new();
    for (kind, warnings) in &report.warnings {
        for warning in warnings {
            let id = warning
                .advisory
                .as_ref()
                .map_or(String::new(), |advisory| advisory.id.to_string());
            let line = format!(
                "{kind:?} {id} {} {}",
                warning.package.name, warning.package.version
            );
            match ACKNOWLEDGED.iter().find(|(known, _)| *known == id) {
                Some((_, why)) => eprintln!("acknowledged: {line}: {why}"),
                None => unacknowledged.push(line),
            }
        }
    }
    assert!(
        unacknowledged.is_empty(),
        "informational advisories nobody has judged (read them, then fix or add them to \
         ACKNOWLEDGED with why): {unacknowledged:#?}"
    );
}

/// The audit above would pass with an empty snapshot: this one proves the snapshot
/// finds what it should, with a lockfile holding an h2 that RUSTSEC-2024-0003 (reset
/// flood) and RUSTSEC-2024-0332 (CONTINUATION flood) name.
#[test]
fn the_snapshot_finds_a_vulnerable_version() {
    let lockfile = Lockfile::from_str(
        r#"version = 3

[[package]]
name = "h2"
version = "0.3.20"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "97ec8491ebaf99c8eaa73058b045fe58073cd6be7f596ac993ced0b0a0c01049"
"#,
    )
    .unwrap();
    let vulnerable = found(&audit(&lockfile));
    for id in ["RUSTSEC-2024-0003", "RUSTSEC-2024-0332"] {
        assert!(
            vulnerable.iter().any(|line| line.starts_with(id)),
            "{id} not found: {vulnerable:#?}"
        );
    }
}
