//! `sitegridctl cache ...`: one request per command, printed with [`crate::output`];
//! `cache listen` lives in [`crate::listen_cmd`].

use std::io::Write;

use futures::TryStreamExt as _;
use sitegrid_client::{Client, EntriesOptions, WriteOptions};

use crate::args::{CacheCommand, RemoveArgs, WriteArgs};
use crate::cache_output::{Count, EntryLine, Got};
use crate::error::CliError;
use crate::input::{parse_key, parse_value};
use crate::output::{OutputFormat, emit};

/// Runs one cache command and prints its result to `out`.
pub(crate) async fn run(
    client: &Client,
    command: CacheCommand,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<(), CliError> {
    match command {
        CacheCommand::Get(args) => {
            let key = parse_key(&args.key)?;
            let found = client.cache(args.cache.cache).get(key.clone()).await?;
            emit(out, format, &Got { key, found })?;
        }
        CacheCommand::Put(args) => {
            let (key, value, options) = write_inputs(&args)?;
            let outcome = cache_of(client, &args).put(key, value, options).await?;
            emit(out, format, &outcome)?;
        }
        CacheCommand::PutIfAbsent(args) => {
            let (key, value, options) = write_inputs(&args)?;
            let outcome = cache_of(client, &args)
                .put_if_absent(key, value, options)
                .await?;
            emit(out, format, &outcome)?;
        }
        CacheCommand::Replace(args) => {
            let (key, value, options) = write_inputs(&args)?;
            let outcome = cache_of(client, &args).replace(key, value, options).await?;
            emit(out, format, &outcome)?;
        }
        CacheCommand::ReplaceWithVersion(args) => {
            let (key, value, options) = write_inputs(&args.write)?;
            let outcome = cache_of(client, &args.write)
                .replace_with_version(key, value, args.expected_version, options)
                .await?;
            emit(out, format, &outcome)?;
        }
        CacheCommand::Remove(args) => {
            let (key, options) = remove_inputs(&args)?;
            let cache = client.cache(args.target.cache.cache);
            emit(out, format, &cache.remove(key, options).await?)?;
        }
        CacheCommand::RemoveWithVersion(args) => {
            let (key, options) = remove_inputs(&args.remove)?;
            let cache = client.cache(args.remove.target.cache.cache);
            let outcome = cache
                .remove_with_version(key, args.expected_version, options)
                .await?;
            emit(out, format, &outcome)?;
        }
        CacheCommand::Size(args) => {
            let count = client.cache(args.cache).size().await?;
            emit(
                out,
                format,
                &Count {
                    name: "size",
                    count,
                },
            )?;
        }
        CacheCommand::Clear(args) if args.all_sites => {
            let (here, peers) = client.cache(args.cache).clear_all_sites().await?;
            for (name, count) in [("removed", here), ("removed_in_peer_sites", peers)] {
                emit(out, format, &Count { name, count })?;
            }
        }
        CacheCommand::Clear(args) => {
            let count = client.cache(args.cache).clear().await?;
            emit(
                out,
                format,
                &Count {
                    name: "removed",
                    count,
                },
            )?;
        }
        CacheCommand::RemoveByTag(args) => {
            let count = client
                .cache(args.cache.cache)
                .remove_by_tag(args.tag)
                .await?;
            emit(
                out,
                format,
                &Count {
                    name: "removed",
                    count,
                },
            )?;
        }
        CacheCommand::Listen(args) => crate::listen_cmd::run(client, args, format, out).await?,
        CacheCommand::Entries(args) => {
            let mut options = EntriesOptions::new()
                .batch_size(args.batch_size.unwrap_or(0))
                .with_values(!args.keys_only);
            options.tag = args.tag;
            let with_value = options.with_values;
            let mut entries = client.cache(args.cache.cache).entries(options).await?;
            let mut listed = 0u64;
            while let Some(entry) = entries.try_next().await? {
                emit(
                    out,
                    format,
                    &EntryLine {
                        entry: &entry,
                        with_value,
                    },
                )?;
                listed += 1;
            }
            if format == OutputFormat::Table {
                let noun = if listed == 1 { "entry" } else { "entries" };
                writeln!(out, "({listed} {noun})")?;
            }
        }
    }
    Ok(())
}

fn cache_of(client: &Client, args: &WriteArgs) -> sitegrid_client::RemoteCache {
    client.cache(args.target.cache.cache.as_str())
}

fn write_inputs(args: &WriteArgs) -> Result<(bytes::Bytes, bytes::Bytes, WriteOptions), CliError> {
    let options = WriteOptions {
        lifespan: args.lifespan,
        max_idle: args.max_idle,
        tags: args.tags.clone(),
        return_previous: args.return_previous,
        request_id: args.request_id.clone(),
    };
    Ok((
        parse_key(&args.target.key)?,
        parse_value(&args.value)?,
        options,
    ))
}

fn remove_inputs(args: &RemoveArgs) -> Result<(bytes::Bytes, WriteOptions), CliError> {
    let options = WriteOptions {
        request_id: args.request_id.clone(),
        ..WriteOptions::default()
    };
    Ok((parse_key(&args.target.key)?, options))
}
