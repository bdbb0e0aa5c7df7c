//! How the results of cache commands print, in both formats.
//!
//! A condition that does not hold prints as a normal result (`not stored: present`,
//! followed by the entry that was there), never as an error.

use bytes::Bytes;
use serde_json::{Value, json};
use sitegrid_client::{
    Entry, PutIfAbsentOutcome, PutOutcome, RemoveOutcome, RemoveWithVersionOutcome, ReplaceOutcome,
    ReplaceWithVersionOutcome, Versioned,
};

use crate::output::{Show, entry_json, entry_row, versioned_json, versioned_table};

/// The answer of `cache get`.
pub(crate) struct Got {
    /// The key asked for.
    pub(crate) key: Bytes,
    /// Its entry, if present.
    pub(crate) found: Option<Versioned>,
}

/// One line of `cache entries`.
pub(crate) struct EntryLine<'a> {
    pub(crate) entry: &'a Entry,
    pub(crate) with_value: bool,
}

/// A number the server answered: `size`, or how many entries a command removed.
pub(crate) struct Count {
    /// Its name in both formats.
    pub(crate) name: &'static str,
    pub(crate) count: u64,
}

impl Show for Got {
    fn table(&self) -> String {
        match &self.found {
            Some(versioned) => versioned_table(Some(&self.key), versioned, ""),
            None => "not found\n".to_owned(),
        }
    }

    fn json(&self) -> Value {
        match &self.found {
            Some(versioned) => {
                let mut entry = versioned_json(versioned);
                entry["key"] = crate::output::bytes_json(&self.key);
                json!({ "found": true, "entry": entry })
            }
            None => json!({ "found": false }),
        }
    }
}

impl Show for EntryLine<'_> {
    fn table(&self) -> String {
        entry_row(self.entry, self.with_value)
    }

    fn json(&self) -> Value {
        entry_json(self.entry, self.with_value)
    }
}

impl Show for Count {
    fn table(&self) -> String {
        format!("{} {}\n", self.name, self.count)
    }

    fn json(&self) -> Value {
        let mut object = serde_json::Map::new();
        object.insert(self.name.to_owned(), self.count.into());
        Value::Object(object)
    }
}

impl Show for PutOutcome {
    fn table(&self) -> String {
        format!("stored version {}\n", self.version) + &titled("previous", self.previous.as_ref())
    }

    fn json(&self) -> Value {
        json!({
            "stored": true,
            "version": self.version,
            "previous": optional_json(self.previous.as_ref()),
        })
    }
}

impl Show for PutIfAbsentOutcome {
    fn table(&self) -> String {
        match self {
            PutIfAbsentOutcome::Stored { version } => format!("stored version {version}\n"),
            PutIfAbsentOutcome::Present(existing) => {
                "not stored: present\n".to_owned() + &titled("existing", Some(existing))
            }
        }
    }

    fn json(&self) -> Value {
        match self {
            PutIfAbsentOutcome::Stored { version } => json!({ "stored": true, "version": version }),
            PutIfAbsentOutcome::Present(existing) => {
                json!({ "stored": false, "existing": versioned_json(existing) })
            }
        }
    }
}

impl Show for ReplaceOutcome {
    fn table(&self) -> String {
        match self {
            ReplaceOutcome::Replaced { version, previous } => {
                format!("replaced version {version}\n") + &titled("previous", previous.as_ref())
            }
            ReplaceOutcome::Absent => "not replaced: absent\n".to_owned(),
        }
    }

    fn json(&self) -> Value {
        match self {
            ReplaceOutcome::Replaced { version, previous } => json!({
                "replaced": true,
                "version": version,
                "previous": optional_json(previous.as_ref()),
            }),
            ReplaceOutcome::Absent => json!({ "replaced": false, "current": null }),
        }
    }
}

impl Show for ReplaceWithVersionOutcome {
    fn table(&self) -> String {
        match self {
            ReplaceWithVersionOutcome::Replaced { version } => {
                format!("replaced version {version}\n")
            }
            ReplaceWithVersionOutcome::NotReplaced { current: None } => {
                "not replaced: absent\n".to_owned()
            }
            ReplaceWithVersionOutcome::NotReplaced { current } => {
                "not replaced: version mismatch\n".to_owned() + &titled("current", current.as_ref())
            }
        }
    }

    fn json(&self) -> Value {
        match self {
            ReplaceWithVersionOutcome::Replaced { version } => {
                json!({ "replaced": true, "version": version })
            }
            ReplaceWithVersionOutcome::NotReplaced { current } => {
                json!({ "replaced": false, "current": optional_json(current.as_ref()) })
            }
        }
    }
}

impl Show for RemoveOutcome {
    fn table(&self) -> String {
        match self {
            RemoveOutcome::Removed { version, previous } => {
                format!("removed version {version}\n") + &titled("previous", previous.as_ref())
            }
            RemoveOutcome::Absent => "not removed: absent\n".to_owned(),
        }
    }

    fn json(&self) -> Value {
        match self {
            RemoveOutcome::Removed { version, previous } => json!({
                "removed": true,
                "version": version,
                "previous": optional_json(previous.as_ref()),
            }),
            RemoveOutcome::Absent => json!({ "removed": false, "current": null }),
        }
    }
}

impl Show for RemoveWithVersionOutcome {
    fn table(&self) -> String {
        match self {
            RemoveWithVersionOutcome::Removed { version } => format!("removed version {version}\n"),
            RemoveWithVersionOutcome::NotRemoved { current: None } => {
                "not removed: absent\n".to_owned()
            }
            RemoveWithVersionOutcome::NotRemoved { current } => {
                "not removed: version mismatch\n".to_owned() + &titled("current", current.as_ref())
            }
        }
    }

    fn json(&self) -> Value {
        match self {
            RemoveWithVersionOutcome::Removed { version } => {
                json!({ "removed": true, "version": version })
            }
            RemoveWithVersionOutcome::NotRemoved { current } => {
                json!({ "removed": false, "current": optional_json(current.as_ref()) })
            }
        }
    }
}

/// `title:` and the entry indented below it; nothing when there is no entry.
fn titled(title: &str, versioned: Option<&Versioned>) -> String {
    versioned.map_or_else(String::new, |v| {
        format!("{title}:\n{}", versioned_table(None, v, "  "))
    })
}

fn optional_json(versioned: Option<&Versioned>) -> Value {
    versioned.map_or(Value::Null, versioned_json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::sample_entry;

    fn sample_versioned(value: &'static [u8]) -> Versioned {
        let entry = sample_entry(b"unused", value);
        Versioned {
            value: entry.value,
            metadata: entry.metadata,
        }
    }

    #[test]
    fn a_refused_put_if_absent_prints_not_stored_and_the_existing_entry() {
        let outcome = PutIfAbsentOutcome::Present(sample_versioned(b"first"));
        let table = outcome.table();
        assert!(
            table.starts_with("not stored: present\nexisting:\n  value       first\n"),
            "{table}"
        );
        assert!(table.contains("  version     7\n"), "{table}");
        let json = outcome.json();
        assert_eq!(json["stored"], false);
        assert_eq!(json["existing"]["value"], "first");
        assert_eq!(json["existing"]["version"], 7);
    }

    #[test]
    fn a_stored_put_if_absent_prints_its_version() {
        let outcome = PutIfAbsentOutcome::Stored { version: 99 };
        assert_eq!(outcome.table(), "stored version 99\n");
        assert_eq!(outcome.json(), json!({ "stored": true, "version": 99 }));
    }

    #[test]
    fn a_version_mismatch_is_told_apart_from_an_absent_key() {
        let mismatch = ReplaceWithVersionOutcome::NotReplaced {
            current: Some(sample_versioned(b"now")),
        };
        assert!(
            mismatch
                .table()
                .starts_with("not replaced: version mismatch\ncurrent:\n")
        );
        let absent = ReplaceWithVersionOutcome::NotReplaced { current: None };
        assert_eq!(absent.table(), "not replaced: absent\n");
        assert_eq!(absent.json(), json!({ "replaced": false, "current": null }));
        let removed = RemoveWithVersionOutcome::NotRemoved { current: None };
        assert_eq!(removed.table(), "not removed: absent\n");
    }

    #[test]
    fn a_removal_prints_the_removed_entry() {
        let outcome = RemoveOutcome::Removed {
            version: 8,
            previous: Some(sample_versioned(&[0xff])),
        };
        assert!(
            outcome
                .table()
                .starts_with("removed version 8\nprevious:\n  value       base64:/w==\n")
        );
        assert_eq!(
            outcome.json()["previous"]["value"],
            json!({ "base64": "/w==" })
        );
    }

    #[test]
    fn get_prints_the_entry_or_not_found() {
        let got = Got {
            key: Bytes::from_static(b"k"),
            found: Some(sample_versioned(b"v")),
        };
        assert!(got.table().starts_with("key         k\nvalue       v\n"));
        assert_eq!(got.json()["entry"]["key"], "k");
        assert_eq!(got.json()["found"], true);
        let missing = Got {
            key: Bytes::from_static(b"k"),
            found: None,
        };
        assert_eq!(missing.table(), "not found\n");
        assert_eq!(missing.json(), json!({ "found": false }));
    }

    #[test]
    fn counts_print_under_their_name() {
        let count = Count {
            name: "size",
            count: 3,
        };
        assert_eq!(count.table(), "size 3\n");
        assert_eq!(count.json(), json!({ "size": 3 }));
    }
}
