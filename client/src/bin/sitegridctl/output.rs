//! How results print: the two formats, bytes as text or base64, and entries.
//!
//! Every printable result implements [`Show`] once for each format, so a command only
//! says what it got and [`emit`] picks the format.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::ValueEnum;
use serde_json::{Value, json};
use sitegrid_client::{Entry, Metadata, Versioned};

use crate::input::BASE64_PREFIX;

/// Output format chosen with `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// Human-readable lines.
    Table,
    /// One JSON object per line and per result.
    Json,
}

/// A result that can print in both formats.
pub(crate) trait Show {
    /// Human-readable lines, each ending with a newline.
    fn table(&self) -> String;
    /// One JSON object.
    fn json(&self) -> Value;
}

/// Prints `item` to `out` in `format`.
pub(crate) fn emit(out: &mut impl Write, format: OutputFormat, item: &impl Show) -> io::Result<()> {
    match format {
        OutputFormat::Table => out.write_all(item.table().as_bytes()),
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, &item.json())?;
            out.write_all(b"\n")
        }
    }
}

/// Bytes for a human: UTF-8 text when valid, otherwise `base64:` and the encoding, so
/// that what prints can be pasted back as a KEY or VALUE argument.
pub(crate) fn bytes_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(format!("{BASE64_PREFIX}{}", STANDARD.encode(bytes))),
    }
}

/// Bytes in JSON: a string when valid UTF-8, otherwise `{"base64": "..."}`.
pub(crate) fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({ "base64": STANDARD.encode(bytes) }),
    }
}

/// A value and its metadata as a flat JSON object.
pub(crate) fn versioned_json(versioned: &Versioned) -> Value {
    let mut object = metadata_json(&versioned.metadata);
    object["value"] = bytes_json(&versioned.value);
    object
}

/// An entry as a flat JSON object; without `value` when values were not asked for.
pub(crate) fn entry_json(entry: &Entry, with_value: bool) -> Value {
    let mut object = metadata_json(&entry.metadata);
    object["key"] = bytes_json(&entry.key);
    if with_value {
        object["value"] = bytes_json(&entry.value);
    }
    object
}

/// Metadata as the fields of a flat JSON object.
pub(crate) fn metadata_json(metadata: &Metadata) -> Value {
    json!({
        "version": metadata.version,
        "origin_site": metadata.origin_site,
        "created_ms": unix_ms(metadata.created),
        "last_used_ms": unix_ms(metadata.last_used),
        "lifespan_ms": metadata.lifespan.map(millis),
        "max_idle_ms": metadata.max_idle.map(millis),
        "tags": metadata.tags,
    })
}

/// A value and its metadata as aligned `name  value` lines, each prefixed by `indent`;
/// `key` adds a first line for the key.
pub(crate) fn versioned_table(key: Option<&[u8]>, versioned: &Versioned, indent: &str) -> String {
    let metadata = &versioned.metadata;
    let mut lines: Vec<(&str, String)> = Vec::new();
    if let Some(key) = key {
        lines.push(("key", bytes_text(key).into_owned()));
    }
    lines.push(("value", bytes_text(&versioned.value).into_owned()));
    lines.push(("version", metadata.version.to_string()));
    lines.push(("origin site", metadata.origin_site.clone()));
    lines.push(("created", time_text(metadata.created)));
    lines.push(("last used", time_text(metadata.last_used)));
    lines.push(("lifespan", duration_text(metadata.lifespan)));
    lines.push(("max idle", duration_text(metadata.max_idle)));
    lines.push(("tags", tags_text(&metadata.tags)));
    let mut text = String::new();
    for (name, value) in lines {
        let _ = writeln!(text, "{indent}{name:<12}{value}");
    }
    text
}

/// One entry on one line: `key = value  [version 7, site1, user=u1]`.
pub(crate) fn entry_row(entry: &Entry, with_value: bool) -> String {
    let mut row = bytes_text(&entry.key).into_owned();
    if with_value {
        let _ = write!(row, " = {}", bytes_text(&entry.value));
    }
    let metadata = &entry.metadata;
    let _ = write!(row, "  [version {}", metadata.version);
    if !metadata.origin_site.is_empty() {
        let _ = write!(row, ", {}", metadata.origin_site);
    }
    if !metadata.tags.is_empty() {
        let _ = write!(row, ", {}", metadata.tags.join(" "));
    }
    row.push_str("]\n");
    row
}

fn time_text(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn duration_text(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "never".to_owned(),
        |d| humantime::format_duration(d).to_string(),
    )
}

fn tags_text(tags: &[String]) -> String {
    if tags.is_empty() {
        "-".to_owned()
    } else {
        tags.join(" ")
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, millis)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;

    /// An entry with fixed metadata, for output tests.
    pub(crate) fn sample_entry(key: &'static [u8], value: &'static [u8]) -> Entry {
        Entry {
            key: Bytes::from_static(key),
            value: Bytes::from_static(value),
            metadata: Metadata {
                version: 7,
                origin_site: "site1".into(),
                created: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
                last_used: UNIX_EPOCH + Duration::from_millis(1_700_000_000_500),
                lifespan: Some(Duration::from_secs(30)),
                max_idle: None,
                tags: vec!["user=u1".into()],
            },
        }
    }

    #[test]
    fn utf8_bytes_print_as_text_and_others_as_prefixed_base64() {
        assert_eq!(bytes_text(b"hello"), "hello");
        assert_eq!(bytes_text(&[0xff, 0x00]), "base64:/wA=");
    }

    #[test]
    fn utf8_bytes_are_json_strings_and_others_base64_objects() {
        assert_eq!(bytes_json(b"hello"), json!("hello"));
        assert_eq!(bytes_json(&[0xff, 0x00]), json!({ "base64": "/wA=" }));
    }

    #[test]
    fn an_entry_in_json_is_one_flat_object() {
        let entry = sample_entry(b"k1", &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(
            entry_json(&entry, true),
            json!({
                "key": "k1",
                "value": { "base64": "3q2+7w==" },
                "version": 7,
                "origin_site": "site1",
                "created_ms": 1_700_000_000_000u64,
                "last_used_ms": 1_700_000_000_500u64,
                "lifespan_ms": 30_000,
                "max_idle_ms": null,
                "tags": ["user=u1"],
            })
        );
        assert!(entry_json(&entry, false).get("value").is_none());
    }

    #[test]
    fn an_entry_row_shows_key_value_and_metadata() {
        let entry = sample_entry(b"k1", b"v1");
        assert_eq!(
            entry_row(&entry, true),
            "k1 = v1  [version 7, site1, user=u1]\n"
        );
        assert_eq!(
            entry_row(&entry, false),
            "k1  [version 7, site1, user=u1]\n"
        );
        let binary = sample_entry(&[0xff], &[0xfe]);
        assert_eq!(
            entry_row(&binary, true),
            "base64:/w== = base64:/g==  [version 7, site1, user=u1]\n"
        );
    }

    #[test]
    fn a_versioned_table_aligns_names_and_formats_times() {
        let entry = sample_entry(b"k1", b"v1");
        let versioned = Versioned {
            value: entry.value.clone(),
            metadata: entry.metadata.clone(),
        };
        assert_eq!(
            versioned_table(Some(b"k1"), &versioned, "  "),
            "  key         k1\n\
             \x20 value       v1\n\
             \x20 version     7\n\
             \x20 origin site site1\n\
             \x20 created     2023-11-14T22:13:20.000Z\n\
             \x20 last used   2023-11-14T22:13:20.500Z\n\
             \x20 lifespan    30s\n\
             \x20 max idle    never\n\
             \x20 tags        user=u1\n"
        );
    }

    struct Fixed;

    impl Show for Fixed {
        fn table(&self) -> String {
            "fixed\n".into()
        }
        fn json(&self) -> Value {
            json!({ "fixed": true })
        }
    }

    #[test]
    fn emit_writes_the_chosen_format_one_line_per_json_object() {
        let mut out = Vec::new();
        emit(&mut out, OutputFormat::Table, &Fixed).unwrap();
        emit(&mut out, OutputFormat::Json, &Fixed).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "fixed\n{\"fixed\":true}\n");
    }
}
