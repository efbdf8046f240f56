//! `mftq get` of a tree batch: the whole tree restored into a directory, one of
//! its files fetched alone (to a file or stdout), or its manifest listed. The
//! manifest is checked before anything is written; see `mft::tree`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mft::tree::{CheckOptions, EntryKind, Manifest, RestoreOptions};
use serde_json::json;

use super::{Target, check_digest, expected_sha256, safe_file_name, write_plain};
use crate::args::GetArgs;
use crate::error::{CliError, Exit};
use crate::output::{hex, human, metadata_json, print_json, progress, rate, utc};

/// What the caller knows of the batch: how to ask for it, and its first pull's
/// description.
pub(super) struct TreeBatch<'a> {
    pub retriever: &'a mft::Retriever,
    pub request: &'a mft::Pull,
    pub info: &'a mft::BatchInfo,
    pub metadata: Option<&'a serde_json::Value>,
}

/// Whether the metadata says the batch is a tree (as `mftq send` writes it).
pub(super) fn is_tree(metadata: Option<&serde_json::Value>) -> bool {
    metadata
        .and_then(|m| m.get("kind"))
        .and_then(|k| k.as_str())
        == Some("tree")
}

/// Does what the arguments ask of a tree batch, and prints its summary.
pub(super) async fn get(
    args: &GetArgs,
    batch: &TreeBatch<'_>,
    started: Instant,
) -> Result<(), CliError> {
    let options = RestoreOptions {
        force: args.force,
        case_insensitive: args.case_insensitive,
    };
    if args.list {
        return list(args, batch).await;
    }
    if let Some(path) = args.file.as_deref() {
        return get_file(args, batch, path, options, started).await;
    }
    restore(args, batch, options, started).await
}

/// Restores the whole tree into `-o DIR` (created if missing) or the current
/// directory.
async fn restore(
    args: &GetArgs,
    batch: &TreeBatch<'_>,
    options: RestoreOptions,
    started: Instant,
) -> Result<(), CliError> {
    let root = match args.output.as_deref() {
        Some("-") => {
            return Err(CliError::usage(
                "-o -: a tree batch is restored into a directory; \
                 one of its files goes to stdout with --file PATH -o -",
            ));
        }
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from("."),
    };
    let created = match std::fs::metadata(&root) {
        Ok(meta) if meta.is_dir() => false,
        Ok(_) => {
            return Err(CliError::usage(format!(
                "-o {}: not a directory (a tree batch is restored into one)",
                root.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(&root)
                .map_err(|e| CliError::io(format!("creating {}", root.display()), e))?;
            true
        }
        Err(e) => return Err(CliError::io(format!("-o {}", root.display()), e)),
    };
    let bar = progress(Some(batch.info.size), "receiving", args.client.json);
    let key = mft::tree::ResumeKey::from(batch.info);
    if let Some((_, kept)) = mft::tree::staged(&root, &key).filter(|(_, kept)| *kept > 0) {
        crate::output::resumed_at(&bar, kept);
        crate::output::note_above(
            &bar,
            format!(
                "resuming the tree from {} of {} staged in {}",
                human(kept),
                human(batch.info.size),
                root.display()
            ),
        );
    }
    let fetched = tokio::select! {
        fetched = mft::tree::fetch(
            batch.retriever,
            batch.request,
            Some(batch.info.size),
            &root,
            options,
            batch.metadata.and_then(expected_sha256),
            |written| bar.set_position(written),
        ) => fetched.map_err(|e| CliError::tree("restoring the tree", e)),
        _ = tokio::signal::ctrl_c() => Err(CliError::new(
            Exit::Interrupted,
            format!("interrupted while restoring the tree into {}", root.display()),
        )),
    };
    bar.finish_and_clear();
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(mut e) => {
            match mft::tree::staged(&root, &key) {
                Some((staging, kept)) if kept > 0 && e.exit != Exit::Integrity => {
                    e.message.push_str(&format!(
                        "; {} of {} are kept in {}: run the same command again to resume",
                        human(kept),
                        human(batch.info.size),
                        staging.display()
                    ));
                }
                _ if created => {
                    // Only if nothing of ours is left in it.
                    let _ = std::fs::remove_dir(&root);
                }
                _ => {}
            }
            return Err(e);
        }
    };
    let elapsed = started.elapsed();
    let info = &fetched.info;
    let summary = json!({
        "schema": "mftq-get/1",
        "kind": "tree",
        "batch_id": String::from_utf8_lossy(&info.batch_id),
        "size": info.size,
        "segments": info.segment_count,
        "sender": info.sender.to_string(),
        "metadata": metadata_json(&info.metadata),
        "chain": hex(&info.chain.0),
        "output": root.display().to_string(),
        "entries": fetched.entries,
        "fetched": fetched.bytes,
        "resumed_from": fetched.resumed_from,
        "seconds": elapsed.as_secs_f64(),
    });
    if args.client.json {
        print_json(&summary);
    } else {
        let resumed = if fetched.resumed_from > 0 {
            format!(", {} of it resumed", human(fetched.resumed_from))
        } else {
            String::new()
        };
        if crate::output::quiet() {
            return Ok(());
        }
        println!(
            "restored {} entries of {:?} ({}{resumed}) into {} in {:.2?} ({}), verified",
            fetched.entries,
            String::from_utf8_lossy(&info.batch_id),
            human(fetched.bytes + fetched.resumed_from),
            root.display(),
            elapsed,
            rate(fetched.bytes, elapsed),
        );
    }
    Ok(())
}

/// Fetches one file of the tree: to `-o FILE`, into `-o DIR/`, to stdout with
/// `-o -`, or by default to its own name in the current directory.
async fn get_file(
    args: &GetArgs,
    batch: &TreeBatch<'_>,
    path: &str,
    options: RestoreOptions,
    started: Instant,
) -> Result<(), CliError> {
    let doing = format!("fetching {path} from the tree");
    let own_name = || {
        safe_file_name(path)
            .ok_or_else(|| CliError::usage(format!("--file {path}: not a file's path")))
    };
    let out = match args.output.as_deref() {
        Some("-") => return file_to_stdout(args, batch, path, started).await,
        Some(o) if o.ends_with('/') || Path::new(o).is_dir() => Path::new(o).join(own_name()?),
        Some(o) => PathBuf::from(o),
        None => PathBuf::from(own_name()?),
    };
    let bar = progress(None, "receiving", args.client.json);
    let fetched = mft::tree::fetch_file(
        batch.retriever,
        batch.request,
        Some(batch.info.size),
        path,
        &out,
        options,
        |written| bar.set_position(written),
    )
    .await;
    bar.finish_and_clear();
    let fetched = fetched.map_err(|e| CliError::tree(&doing, e))?;
    print_file_summary(
        args,
        &fetched.info,
        path,
        &out.display().to_string(),
        fetched.bytes,
        started,
    );
    Ok(())
}

/// Streams one file of the tree to stdout as it verifies, and checks its
/// SHA-256 against the manifest's.
async fn file_to_stdout(
    args: &GetArgs,
    batch: &TreeBatch<'_>,
    path: &str,
    started: Instant,
) -> Result<(), CliError> {
    let doing = format!("fetching {path} from the tree");
    let manifest = checked_manifest(args, batch).await?;
    let (entry, _) = manifest
        .find(path)
        .ok_or_else(|| CliError::usage(format!("--file {path}: not in the batch's manifest")))?;
    let file = match &entry.kind {
        EntryKind::Hardlink { target } => target.as_str(),
        _ => entry.path.as_str(),
    };
    let (size, sha256, offset) = match manifest.find(file) {
        Some((e, offset)) => match e.kind {
            EntryKind::File { size, sha256 } => (size, sha256, offset),
            _ => {
                return Err(CliError::usage(format!(
                    "--file {path}: a directory or a symbolic link, not a file"
                )));
            }
        },
        None => {
            return Err(CliError::usage(format!(
                "--file {path}: not in the batch's manifest"
            )));
        }
    };
    let bar = progress(Some(size), "receiving", args.client.json);
    let info = if size > 0 {
        let (reader, info) = batch
            .retriever
            .pull(&batch.request.clone().range(offset..offset + size))
            .await
            .map_err(|e| CliError::mft(&doing, e))?;
        if !info.chain.matches(&batch.info.chain) {
            return Err(CliError::tree(
                &doing,
                mft::tree::TreeError::Integrity(
                    "the batch was replaced while it was fetched; fetch it again".into(),
                ),
            ));
        }
        let (_, digest) = write_plain(reader, &Target::Stdout, &bar).await?;
        check_digest(Some(sha256), digest)?;
        info
    } else {
        batch.info.clone()
    };
    bar.finish_and_clear();
    print_file_summary(args, &info, path, "-", size, started);
    Ok(())
}

/// The summary of one file fetched from a tree (on stderr when stdout carries
/// the data).
fn print_file_summary(
    args: &GetArgs,
    info: &mft::BatchInfo,
    path: &str,
    output: &str,
    bytes: u64,
    started: Instant,
) {
    let elapsed = started.elapsed();
    let summary = json!({
        "schema": "mftq-get/1",
        "kind": "tree-file",
        "batch_id": String::from_utf8_lossy(&info.batch_id),
        "size": info.size,
        "sender": info.sender.to_string(),
        "chain": hex(&info.chain.0),
        "file": path,
        "output": output,
        "fetched": bytes,
        "resumed_from": 0,
        "seconds": elapsed.as_secs_f64(),
    });
    let text = if args.client.json {
        summary.to_string()
    } else {
        format!(
            "batch {}\nreceived {path} ({}) in {:.2?}, verified\nsender {}",
            String::from_utf8_lossy(&info.batch_id),
            human(bytes),
            elapsed,
            info.sender,
        )
    };
    if args.client.json && output != "-" {
        print_json(&summary);
    } else if crate::output::quiet() && !args.client.json {
    } else if output == "-" {
        eprintln!("{text}");
    } else if args.client.json {
        print_json(&summary);
    } else {
        println!("{text}");
    }
}

/// The tree's manifest, fetched and checked: a hostile one is refused here too,
/// so its names never reach the terminal.
async fn checked_manifest(args: &GetArgs, batch: &TreeBatch<'_>) -> Result<Manifest, CliError> {
    let (manifest, _, _) =
        mft::tree::fetch_manifest(batch.retriever, batch.request, Some(batch.info.size))
            .await
            .map_err(|e| CliError::tree("reading the tree's manifest", e))?;
    manifest
        .check(CheckOptions {
            case_insensitive: args.case_insensitive,
        })
        .map_err(|e| CliError::tree("reading the tree's manifest", e))?;
    Ok(manifest)
}

/// Prints the manifest, one entry a line as `ls -l` would (or as JSON).
async fn list(args: &GetArgs, batch: &TreeBatch<'_>) -> Result<(), CliError> {
    let manifest = checked_manifest(args, batch).await?;
    if args.client.json {
        let entries: Vec<serde_json::Value> = manifest
            .entries
            .iter()
            .map(|e| {
                let mut entry = json!({
                    "path": e.path,
                    "mode": e.mode,
                    "mtime": e.mtime.secs,
                });
                match &e.kind {
                    EntryKind::File { size, sha256 } => {
                        entry["kind"] = json!("file");
                        entry["size"] = json!(size);
                        entry["sha256"] = json!(hex(sha256));
                    }
                    EntryKind::Dir => entry["kind"] = json!("dir"),
                    EntryKind::Symlink { target } => {
                        entry["kind"] = json!("symlink");
                        entry["target"] = json!(target);
                    }
                    EntryKind::Hardlink { target } => {
                        entry["kind"] = json!("hardlink");
                        entry["target"] = json!(target);
                    }
                }
                entry
            })
            .collect();
        print_json(&json!({
            "schema": "mftq-tree-list/1",
            "batch_id": String::from_utf8_lossy(&batch.info.batch_id),
            "sender": batch.info.sender.to_string(),
            "entries": entries,
        }));
        return Ok(());
    }
    for entry in &manifest.entries {
        println!("{}", list_line(entry));
    }
    Ok(())
}

/// One entry as `ls -l` shows it: kind and mode, size, mtime (UTC), path.
fn list_line(entry: &mft::tree::Entry) -> String {
    let (kind, size, suffix) = match &entry.kind {
        EntryKind::File { size, .. } => ('-', human(*size), String::new()),
        EntryKind::Dir => ('d', "-".into(), "/".into()),
        EntryKind::Symlink { target } => ('l', "-".into(), format!(" -> {target}")),
        EntryKind::Hardlink { target } => ('h', "-".into(), format!(" => {target}")),
    };
    let mtime = u64::try_from(entry.mtime.secs).map_or_else(|_| "before 1970".into(), utc);
    format!(
        "{kind}{} {size:>10}  {mtime}  {}{suffix}",
        mode_string(entry.mode),
        entry.path
    )
}

/// `rwxr-xr-x` for `0o755`.
fn mode_string(mode: u32) -> String {
    (0..9)
        .map(|bit| {
            if mode & (0o400 >> bit) == 0 {
                '-'
            } else {
                ['r', 'w', 'x'][bit % 3]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_list_as_ls_does() {
        assert_eq!(mode_string(0o755), "rwxr-xr-x");
        assert_eq!(mode_string(0o640), "rw-r-----");
        let entry = mft::tree::Entry {
            path: "docs/a.txt".into(),
            mode: 0o644,
            mtime: mft::tree::Timestamp { secs: 0, nanos: 0 },
            kind: EntryKind::File {
                size: 2048,
                sha256: [0; 32],
            },
        };
        assert_eq!(
            list_line(&entry),
            "-rw-r--r--    2.0 KiB  1970-01-01T00:00:00Z  docs/a.txt"
        );
        let link = mft::tree::Entry {
            kind: EntryKind::Symlink {
                target: "a.txt".into(),
            },
            path: "docs/b".into(),
            ..entry
        };
        assert!(
            list_line(&link).ends_with("docs/b -> a.txt"),
            "{}",
            list_line(&link)
        );
    }
}
