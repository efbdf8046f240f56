//! `mftq send`: push a file (or stdin, or a tree of files and directories) to a
//! server as a batch, with a progress bar,
//! and print the server's signed receipt.

use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use indicatif::ProgressBar;
use serde_json::json;
use tokio::io::AsyncRead;

use crate::args::SendArgs;
use crate::client::Client;
use crate::error::{CliError, Exit};
use crate::output::{hex, human, print_json, progress, rate};

/// Sends the batch and prints the receipt.
pub async fn run(args: SendArgs) -> Result<(), CliError> {
    let client = Client::new(
        &args.client,
        (&args.tuning).into(),
        "--to",
        args.to.as_deref(),
    )
    .await?;
    let mut config = client.config.clone();
    let chunk = u32::try_from(args.chunk)
        .map_err(|_| CliError::usage(format!("--chunk {}: too large", args.chunk)))?;
    config.chunk_size(chunk).streams(args.streams);
    config.validate().map_err(|e| {
        let flag = if e.to_string().contains("chunk") {
            "--chunk"
        } else {
            "--streams"
        };
        CliError::usage(format!("{flag}: {e}"))
    })?;
    let json_out = args.client.json;

    // Everything local is checked before anything is sent.
    let input = Input::from_args(&args)?;
    let (batch_id, size, default_metadata) = input.describe(&args)?;
    let fixed_metadata: Option<Vec<u8>> = match &args.metadata {
        None => None,
        Some(text) => Some(read_metadata(text)?),
    };
    config.replace(args.replace);
    config.compress(args.compress.into());
    let sender = mft::Sender::new(client.manager.clone(), config)
        .map_err(|e| CliError::mft("configuring the sender", e))?;
    let bar = progress(size, "sending", json_out);
    let watcher = tokio::spawn(watch(sender.subscribe(), bar.clone()));
    let _retries = crate::output::AbortOnDrop(crate::output::follow_retries(
        sender.subscribe(),
        client.retries,
    ));
    let outcome = tokio::spawn(outcome(sender.subscribe()));
    let started = Instant::now();
    // A resumed transfer of other content (the file changed since it was
    // interrupted) is aborted by the sender; then the file is sent once more,
    // from its start, as a fresh transfer.
    let sending = async {
        let mut restarted = false;
        loop {
            let reader = input.open().await?;
            let sent = match &fixed_metadata {
                Some(metadata) => sender.send(reader, batch_id.as_bytes(), metadata).await,
                None => {
                    let check = input.change_check();
                    let mut metadata = default_metadata.clone();
                    let make = move |content: &mft::Content| {
                        if let Some((path, before)) = check {
                            before.unchanged(&path, content.size)?;
                        }
                        metadata["sha256"] = json!(hex(&content.sha256));
                        Ok(metadata.to_string().into_bytes())
                    };
                    sender.send_with(reader, batch_id.as_bytes(), make).await
                }
            };
            match sent {
                Err(mft::Error::ContentChanged(_)) if !input.is_stdin() && !restarted => {
                    restarted = true;
                    crate::output::note_above(
                        &bar,
                        "mftq: the file changed since the interrupted send: sending it afresh"
                            .into(),
                    );
                }
                other => return Ok::<_, CliError>(other),
            }
        }
    };
    let result = tokio::select! {
        result = sending => result?,
        _ = tokio::signal::ctrl_c() => {
            watcher.abort();
            bar.finish_and_clear();
            return Err(interrupted(&args, &batch_id, &sender).await);
        }
    };
    let elapsed = started.elapsed();
    watcher.abort();
    bar.finish_and_clear();
    client.manager.close();
    let receipt = result.map_err(|e| {
        let exists = e.refuse_code() == Some(mft::wire::RefuseCode::BatchExists);
        let mut err = CliError::mft(&format!("sending batch {batch_id:?}"), e);
        if exists {
            err.exit = Exit::Usage;
            err.message
                .push_str(" (use --replace to replace it, or choose another --batch-id)");
        }
        err
    })?;
    drop(sender);
    let Outcome {
        already_stored: already,
        sealed,
    } = outcome.await.unwrap_or_default();
    if let Some(path) = &args.receipt {
        crate::receipt::write(path, &receipt)?;
    }

    if json_out {
        print_json(&json!({
            "schema": "mftq-send/1",
            "batch_id": String::from_utf8_lossy(&receipt.batch_id),
            "size": receipt.size,
            "segments": receipt.segment_count,
            "transfer_id": hex(receipt.transfer_id.as_bytes()),
            "sender": hex(&receipt.sender),
            "server": hex(&receipt.server),
            "completed_unix": receipt.completed_unix,
            "chain": hex(receipt.chain.as_bytes()),
            "signature": hex(receipt.signature.as_bytes()),
            "content_sha256": hex(&receipt.content_digest),
            "already_stored": already,
            "sealed_bytes": sealed,
            "seconds": elapsed.as_secs_f64(),
        }));
    } else if !crate::output::quiet() {
        // One line; the receipt itself is in --json and --receipt FILE.
        let batch = String::from_utf8_lossy(&receipt.batch_id);
        if already {
            println!(
                "already stored {batch:?}: the server holds the same {} (same SHA-256); nothing sent",
                human(receipt.size)
            );
        } else {
            // The rate counts what crossed the network in this run.
            let moved = if sealed > 0 { sealed } else { receipt.size };
            let compressed = if sealed > 0 && sealed < receipt.size {
                format!(", compressed to {}", human(sealed))
            } else {
                String::new()
            };
            println!(
                "sent {batch:?}: {} in {} segments in {:.2?} ({}){compressed}",
                human(receipt.size),
                receipt.segment_count,
                elapsed,
                rate(moved, elapsed),
            );
        }
    }
    Ok(())
}

/// What `send` reads: stdin, one file, or a tree of files and directories.
enum Input {
    Stdin,
    File { path: PathBuf, before: FileState },
    Tree(Box<mft::tree::Packing>),
}

impl Input {
    /// The input the arguments name, checked: one regular file (or `-`) is sent
    /// as it is; several, or a directory, as a tree.
    fn from_args(args: &SendArgs) -> Result<Self, CliError> {
        if let [only] = args.files.as_slice() {
            if only == "-" {
                return Ok(Input::Stdin);
            }
            let path = Path::new(only);
            let info = std::fs::metadata(path)
                .map_err(|e| CliError::io(format!("input file {}", path.display()), e))?;
            if info.is_file() {
                return Ok(Input::File {
                    path: path.to_path_buf(),
                    before: FileState::from_metadata(&info),
                });
            }
            if !info.is_dir() {
                return Err(CliError::usage(format!(
                    "input file {}: not a regular file or directory",
                    path.display()
                )));
            }
        }
        if args.files.iter().any(|f| f == "-") {
            return Err(CliError::usage(
                "stdin (-) is sent on its own, not with other inputs",
            ));
        }
        let inputs: Vec<PathBuf> = args.files.iter().map(PathBuf::from).collect();
        let packing = mft::tree::Packing::plan(&inputs, args.recursive)
            .map_err(|e| CliError::tree("sending the tree", e))?;
        for skipped in packing.skipped() {
            crate::output::notice(format!(
                "leaving out {}: {}",
                skipped.path.display(),
                skipped.why
            ));
        }
        Ok(Input::Tree(Box::new(packing)))
    }

    fn is_stdin(&self) -> bool {
        matches!(self, Input::Stdin)
    }

    /// The batch id (from `--batch-id` or the input's name), the size if known,
    /// and the default metadata.
    fn describe(
        &self,
        args: &SendArgs,
    ) -> Result<(String, Option<u64>, serde_json::Value), CliError> {
        Ok(match self {
            Input::Stdin => {
                let batch_id = args
                    .batch_id
                    .clone()
                    .ok_or_else(|| CliError::usage("sending stdin (-) needs --batch-id ID"))?;
                let metadata = json!({ "name": batch_id });
                (batch_id, None, metadata)
            }
            Input::File { path, before } => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string());
                let batch_id = args.batch_id.clone().unwrap_or_else(|| name.clone());
                let info = std::fs::metadata(path)
                    .map_err(|e| CliError::io(format!("input file {}", path.display()), e))?;
                let mtime = info
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                let mode = std::os::unix::fs::PermissionsExt::mode(&info.permissions()) & 0o777;
                let metadata =
                    json!({ "name": name, "size": before.len, "mtime": mtime, "mode": mode });
                (batch_id, Some(before.len), metadata)
            }
            Input::Tree(packing) => {
                let top: Vec<&str> = packing
                    .entries()
                    .map(|e| e.path.as_str())
                    .filter(|p| !p.contains('/'))
                    .collect();
                let batch_id = match (&args.batch_id, top.as_slice()) {
                    (Some(id), _) => id.clone(),
                    (None, [one]) => one.to_string(),
                    (None, _) => {
                        return Err(CliError::usage(
                            "sending several inputs as one batch needs --batch-id ID",
                        ));
                    }
                };
                let size = packing
                    .batch_len()
                    .map_err(|e| CliError::tree("sending the tree", e))?;
                let metadata = json!({
                    "name": batch_id,
                    "kind": "tree",
                    "entries": packing.entries().count(),
                    "files": packing.file_count(),
                    "size": size,
                });
                (batch_id, Some(size), metadata)
            }
        })
    }

    /// The input, opened (again) from its start.
    async fn open(&self) -> Result<Box<dyn AsyncRead + Send + Unpin>, CliError> {
        Ok(match self {
            Input::Stdin => Box::new(tokio::io::stdin()),
            Input::File { path, .. } => Box::new(
                tokio::fs::File::open(path)
                    .await
                    .map_err(|e| CliError::io(format!("input file {}", path.display()), e))?,
            ),
            Input::Tree(packing) => Box::new(packing.reader()),
        })
    }

    /// For one file, what to check once it was read: that it did not change.
    /// (A tree's reader checks each of its files itself.)
    fn change_check(&self) -> Option<(PathBuf, FileState)> {
        match self {
            Input::File { path, before } => Some((path.clone(), before.clone())),
            _ => None,
        }
    }
}

/// What the sender's events said of the send.
#[derive(Debug, Default)]
struct Outcome {
    /// The server held the same content already.
    already_stored: bool,
    /// Sealed bytes (after compression, with tags) the server stored in this run.
    sealed: u64,
}

/// Follows the sender's events to the end of the send.
async fn outcome(mut events: tokio::sync::broadcast::Receiver<mft::Event>) -> Outcome {
    use tokio::sync::broadcast::error::RecvError;
    let mut outcome = Outcome::default();
    loop {
        match events.recv().await {
            Ok(mft::Event::AlreadyStored { .. }) => outcome.already_stored = true,
            Ok(mft::Event::Progress { sealed, .. }) => outcome.sealed = sealed,
            Ok(mft::Event::Completed { .. } | mft::Event::Failed { .. }) => return outcome,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return outcome,
        }
    }
}

/// Feeds the progress bar from the sender's events.
async fn watch(mut events: tokio::sync::broadcast::Receiver<mft::Event>, bar: ProgressBar) {
    use tokio::sync::broadcast::error::RecvError;
    // After a resume the first progress counts what the server held: the bar
    // starts there, and its rate from there.
    let mut resumed = false;
    loop {
        match events.recv().await {
            Ok(mft::Event::Progress { bytes, .. }) if std::mem::take(&mut resumed) => {
                crate::output::resumed_at(&bar, bytes)
            }
            Ok(mft::Event::Progress { bytes, .. }) => bar.set_position(bytes),
            Ok(mft::Event::Resumed { stored }) => {
                resumed = true;
                crate::output::note_above(
                    &bar,
                    format!("mftq: resuming: the server holds {stored} segments"),
                )
            }
            Ok(mft::Event::Completed { .. }) => return,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// What identifies a file's content without reading it: if any of this changed
/// between the start and the end of a send, so may have the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileState {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
    #[cfg(unix)]
    ctime: (i64, i64),
}

impl FileState {
    #[cfg(test)]
    fn of(path: &Path) -> Result<Self, CliError> {
        let info = std::fs::metadata(path)
            .map_err(|e| CliError::io(format!("input file {}", path.display()), e))?;
        Ok(Self::from_metadata(&info))
    }

    fn from_metadata(info: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        FileState {
            len: info.len(),
            modified: info.modified().ok(),
            #[cfg(unix)]
            inode: (info.dev(), info.ino()),
            #[cfg(unix)]
            ctime: (info.ctime(), info.ctime_nsec()),
        }
    }

    /// Checks that the file at `path` is still as it was, and that `sent` bytes
    /// (all of them) were read from it.
    fn unchanged(&self, path: &Path, sent: u64) -> mft::Result<()> {
        let changed = |why: String| mft::Error::InputChanged(format!("{}: {why}", path.display()));
        let now = std::fs::metadata(path)
            .map(|info| Self::from_metadata(&info))
            .map_err(|e| changed(format!("it can no longer be read ({e})")))?;
        if sent != self.len {
            return Err(changed(format!(
                "{sent} bytes were read, but the file had {} when the send started",
                self.len
            )));
        }
        if now != *self {
            return Err(changed(
                "its size, modification time or inode changed during the send; send it again once it is stable".into(),
            ));
        }
        Ok(())
    }
}

/// `--metadata`: JSON text, or `@FILE` holding it; must be valid JSON.
fn read_metadata(text: &str) -> Result<Vec<u8>, CliError> {
    let bytes = match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read(path).map_err(|e| CliError::io(format!("--metadata @{path}"), e))?
        }
        None => text.as_bytes().to_vec(),
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| CliError::usage(format!("--metadata: not valid JSON: {e}")))?;
    Ok(bytes)
}

/// After Ctrl-C: abort the transfer if asked to, else say how to resume or abort
/// it. The server keeps what it received either way until told or until its
/// deadline, so a re-run resumes where this one stopped.
async fn interrupted(args: &SendArgs, batch_id: &str, sender: &mft::Sender) -> CliError {
    if args.cancel_on_interrupt {
        return match crate::abort::abort_batch(sender, batch_id.as_bytes()).await {
            Ok(Some(held)) => CliError::new(
                Exit::Interrupted,
                format!(
                    "interrupted; batch {batch_id:?} aborted, the server deleted the {} it held",
                    human(held)
                ),
            ),
            Ok(None) => CliError::new(
                Exit::Interrupted,
                format!("interrupted before the server opened batch {batch_id:?}"),
            ),
            Err(e) => CliError::new(
                Exit::Interrupted,
                format!(
                    "interrupted; aborting batch {batch_id:?} failed: {}",
                    e.message
                ),
            ),
        };
    }
    // The abort command names what the send was given; the rest comes from the
    // same environment and config.
    let client = &args.client;
    let mut given = String::new();
    if let Some(to) = &args.to {
        given.push_str(&format!(" --to {to}"));
    }
    if let Some(key) = &client.server_key {
        given.push_str(&format!(" --server-key {key}"));
    }
    if let Some(key) = &client.key {
        given.push_str(&format!(" --key {}", key.display()));
    }
    CliError::new(
        Exit::Interrupted,
        format!(
            "interrupted; the server keeps what it received of batch {batch_id:?}.\n  \
             resume: run the same command again\n  \
             abort:  mftq abort {batch_id:?}{given}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_changes_during_a_send_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.bin");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let before = FileState::of(&path).unwrap();
        before.unchanged(&path, 4096).unwrap();

        // Fewer bytes read than the file had: refused.
        let short = before.unchanged(&path, 4000).unwrap_err();
        assert_eq!(short.kind(), mft::ErrorKind::Integrity, "{short}");

        // Rewritten in place with the same size: the modification time moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, vec![8u8; 4096]).unwrap();
        let rewritten = before.unchanged(&path, 4096).unwrap_err();
        assert!(
            rewritten.to_string().contains("changed during the send"),
            "{rewritten}"
        );

        // Replaced by another file (rename over it): a new inode.
        let fresh = FileState::of(&path).unwrap();
        let other = dir.path().join("other.bin");
        std::fs::write(&other, vec![8u8; 4096]).unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(fresh.unchanged(&path, 4096).is_err());

        // Deleted: refused, naming the file.
        std::fs::remove_file(&path).unwrap();
        let gone = fresh.unchanged(&path, 4096).unwrap_err();
        assert!(gone.to_string().contains("input.bin"), "{gone}");
    }
}
