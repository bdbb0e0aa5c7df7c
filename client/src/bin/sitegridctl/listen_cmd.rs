//! `sitegridctl cache listen`: prints the events of a subscription as they come.
//!
//! Each event is flushed at once: the command is read by people watching and by scripts
//! reading line by line, neither of which may wait for a buffer to fill.

use std::fmt::Write as _;
use std::io::Write;

use futures::TryStreamExt as _;
use serde_json::{Value, json};
use sitegrid_client::{Change, Client, Event, ListenOptions};

use crate::args::ListenArgs;
use crate::error::CliError;
use crate::input::parse_prefix;
use crate::output::{OutputFormat, Show, bytes_json, bytes_text, emit, metadata_json};

/// Name of an invalidation, in both formats.
const INVALIDATE_ALL: &str = "invalidate_all";

/// Follows the caches of `args` and prints every event to `out`, until `--count` events
/// or Ctrl-C.
pub(crate) async fn run(
    client: &Client,
    args: ListenArgs,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut options = ListenOptions::new(args.caches)
        .with_values(!args.keys_only)
        .include_current_state(args.current_state)
        .from_version(args.from_version.unwrap_or(0))
        .resume_margin(args.resume_margin);
    if let Some(prefix) = &args.prefix {
        options = options.key_prefix(parse_prefix(prefix)?);
    }
    options.tag = args.tag;
    let interrupted = async {
        // Without a handler, Ctrl-C keeps its default (ending the process) rather than
        // ending the command at once.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = print_events(client, options, args.count, format, out) => result,
        // Ctrl-C is how an interactive listen ends: not a failure.
        () = interrupted => Ok(()),
    }
}

async fn print_events(
    client: &Client,
    options: ListenOptions,
    count: Option<u64>,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut events = client.listen(options).await?;
    let mut printed = 0u64;
    while count.is_none_or(|count| printed < count) {
        let Some(event) = events.try_next().await? else {
            break;
        };
        emit(out, format, &EventLine(&event))?;
        out.flush()?;
        printed += 1;
    }
    Ok(())
}

/// One event, one line.
struct EventLine<'a>(&'a Event);

impl Show for EventLine<'_> {
    fn table(&self) -> String {
        match self.0 {
            Event::Changed(change) => change_row(change),
            Event::InvalidateAll { cache, version } => {
                format!("{INVALIDATE_ALL:<14} {cache}  [version {version}]\n")
            }
        }
    }

    fn json(&self) -> Value {
        match self.0 {
            Event::Changed(change) => change_json(change),
            Event::InvalidateAll { cache, version } => {
                json!({ "kind": INVALIDATE_ALL, "cache": cache, "version": version })
            }
        }
    }
}

/// `created        work k1 = v1  [version 7, site1, user=u1]`; the kind is padded so
/// that caches line up.
fn change_row(change: &Change) -> String {
    let mut row = format!(
        "{:<14} {} {}",
        change.kind.as_str(),
        change.cache,
        bytes_text(&change.key)
    );
    if let Some(value) = &change.value {
        let _ = write!(row, " = {}", bytes_text(value));
    }
    let _ = write!(row, "  [version {}", change.version);
    if !change.origin_site.is_empty() {
        let _ = write!(row, ", {}", change.origin_site);
    }
    if let Some(metadata) = change.metadata.as_ref().filter(|m| !m.tags.is_empty()) {
        let _ = write!(row, ", {}", metadata.tags.join(" "));
    }
    row.push_str("]\n");
    row
}

/// A change as a flat object: its own fields, then the metadata's when there is any.
fn change_json(change: &Change) -> Value {
    let mut object = change
        .metadata
        .as_ref()
        .map_or_else(|| json!({}), metadata_json);
    object["kind"] = change.kind.as_str().into();
    object["cache"] = change.cache.clone().into();
    object["key"] = bytes_json(&change.key);
    object["version"] = change.version.into();
    object["origin_site"] = change.origin_site.clone().into();
    object["value"] = change.value.as_deref().map_or(Value::Null, bytes_json);
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::sample_entry;
    use bytes::Bytes;
    use sitegrid_client::ChangeKind;

    fn sample_change(kind: ChangeKind, with_values: bool) -> Change {
        let entry = sample_entry(b"k1", &[0xff, 0xfe]);
        Change {
            kind,
            cache: "work".into(),
            key: entry.key,
            version: 7,
            origin_site: "site1".into(),
            value: with_values.then_some(entry.value),
            metadata: with_values.then_some(entry.metadata),
        }
    }

    #[test]
    fn a_change_prints_on_one_line_with_its_value_and_metadata() {
        let line = EventLine(&Event::Changed(sample_change(ChangeKind::Created, true)));
        assert_eq!(
            line.table(),
            "created        work k1 = base64://4=  [version 7, site1, user=u1]\n"
        );
        let keys_only = EventLine(&Event::Changed(sample_change(ChangeKind::Removed, false)));
        assert_eq!(
            keys_only.table(),
            "removed        work k1  [version 7, site1]\n"
        );
    }

    #[test]
    fn an_invalidation_prints_its_cache_and_version() {
        let event = Event::InvalidateAll {
            cache: "sessions".into(),
            version: 12,
        };
        assert_eq!(
            EventLine(&event).table(),
            "invalidate_all sessions  [version 12]\n"
        );
        assert_eq!(
            EventLine(&event).json(),
            json!({ "kind": "invalidate_all", "cache": "sessions", "version": 12 })
        );
    }

    #[test]
    fn a_change_in_json_has_its_fields_and_the_metadata() {
        let line = EventLine(&Event::Changed(sample_change(ChangeKind::Modified, true)));
        assert_eq!(
            line.json(),
            json!({
                "kind": "modified",
                "cache": "work",
                "key": "k1",
                "version": 7,
                "origin_site": "site1",
                "value": { "base64": "//4=" },
                "created_ms": 1_700_000_000_000u64,
                "last_used_ms": 1_700_000_000_500u64,
                "lifespan_ms": 30_000,
                "max_idle_ms": null,
                "tags": ["user=u1"],
            })
        );
    }

    #[test]
    fn a_keys_only_change_in_json_has_a_null_value_and_no_metadata() {
        let mut change = sample_change(ChangeKind::Expired, false);
        change.key = Bytes::from_static(b"k2");
        assert_eq!(
            EventLine(&Event::Changed(change)).json(),
            json!({
                "kind": "expired",
                "cache": "work",
                "key": "k2",
                "version": 7,
                "origin_site": "site1",
                "value": null,
            })
        );
    }
}
