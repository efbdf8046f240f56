//! `mftq send`: push a file (or stdin) to a server as a batch, with a progress bar,
//! and print the server's signed receipt.

use std::io::Read;
use std::path::Path;
use std::time::{Instant, UNIX_EPOCH};

use indicatif::ProgressBar;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;

use crate::args::SendArgs;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{hex, human, mb_per_s, print_json, progress};

/// Sends the batch and prints the receipt.
pub async fn run(args: SendArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client, "--to", &args.to)?;
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
    let stdin = args.file == "-";
    let (batch_id, size, default_metadata) = if stdin {
        let batch_id = args
            .batch_id
            .clone()
            .ok_or_else(|| CliError::usage("sending stdin (-) needs --batch-id ID"))?;
        let metadata = json!({ "name": batch_id });
        (batch_id, None, metadata)
    } else {
        let path = Path::new(&args.file);
        let info = std::fs::metadata(path)
            .map_err(|e| CliError::io(format!("input file {}", path.display()), e))?;
        if !info.is_file() {
            return Err(CliError::usage(format!(
                "input file {}: not a regular file",
                path.display()
            )));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| args.file.clone());
        let batch_id = args.batch_id.clone().unwrap_or_else(|| name.clone());
        let mtime = info
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        // mft::Sender takes the metadata when the transfer starts: hash first.
        let sha256 = if args.metadata.is_none() {
            Some(hash_file(path, info.len(), json_out).await?)
        } else {
            None
        };
        let metadata =
            json!({ "name": name, "size": info.len(), "mtime": mtime, "sha256": sha256 });
        (batch_id, Some(info.len()), metadata)
    };
    let metadata: Vec<u8> = match &args.metadata {
        None => default_metadata.to_string().into_bytes(),
        Some(text) => read_metadata(text)?,
    };
    let reader: Box<dyn AsyncRead + Send + Unpin> = if stdin {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&args.file)
                .await
                .map_err(|e| CliError::io(format!("input file {}", args.file), e))?,
        )
    };

    let sender = mft::Sender::new(client.manager.clone(), config)
        .map_err(|e| CliError::mft("configuring the sender", e))?;
    let bar = progress(size, "sending", json_out);
    let watcher = tokio::spawn(watch(sender.subscribe(), bar.clone()));
    let started = Instant::now();
    let result = sender.send(reader, batch_id.as_bytes(), &metadata).await;
    let elapsed = started.elapsed();
    watcher.abort();
    bar.finish_and_clear();
    client.manager.close();
    let receipt = result.map_err(|e| {
        let exists = e.refuse_code() == Some(mft::wire::RefuseCode::BatchExists);
        let mut err = CliError::mft(&format!("sending batch {batch_id:?}"), e);
        if exists {
            err.message
                .push_str(" (batch ids are unique per server: choose another --batch-id)");
        }
        err
    })?;

    if json_out {
        print_json(&json!({
            "batch_id": String::from_utf8_lossy(&receipt.batch_id),
            "size": receipt.size,
            "segments": receipt.segment_count,
            "transfer_id": hex(&receipt.transfer_id),
            "sender": hex(&receipt.sender),
            "server": hex(&receipt.server),
            "completed_unix": receipt.completed_unix,
            "chain": hex(&receipt.chain),
            "signature": hex(&receipt.signature),
            "seconds": elapsed.as_secs_f64(),
        }));
    } else {
        println!("batch {}", String::from_utf8_lossy(&receipt.batch_id));
        println!(
            "sent {} in {} segments in {:.2?} ({:.1} MB/s)",
            human(receipt.size),
            receipt.segment_count,
            elapsed,
            mb_per_s(receipt.size, elapsed)
        );
        println!("size {}", receipt.size);
        println!("segments {}", receipt.segment_count);
        println!("transfer {}", hex(&receipt.transfer_id));
        println!("receipt signature {}", hex(&receipt.signature));
    }
    Ok(())
}

/// Feeds the progress bar from the sender's events.
async fn watch(mut events: tokio::sync::broadcast::Receiver<mft::Event>, bar: ProgressBar) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(mft::Event::Progress { bytes, .. }) => bar.set_position(bytes),
            Ok(mft::Event::Retrying { attempt, error, .. }) => {
                note(&bar, format!("mftq: retry {attempt} after: {error}"))
            }
            Ok(mft::Event::Resumed { stored }) => note(
                &bar,
                format!("mftq: resuming: the server holds {stored} segments"),
            ),
            Ok(mft::Event::Completed { .. } | mft::Event::Failed { .. }) => return,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// A line on stderr, above the bar when it is drawn.
fn note(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// SHA-256 of the file, read once before sending (on a blocking thread).
async fn hash_file(path: &Path, len: u64, hidden: bool) -> Result<String, CliError> {
    let bar = progress(Some(len), "hashing", hidden);
    let path = path.to_path_buf();
    let worker_bar = bar.clone();
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            worker_bar.inc(n as u64);
        }
        Ok(hex(&hasher.finalize()))
    })
    .await
    .map_err(|e| CliError::other(format!("hashing: {e}")))?;
    bar.finish_and_clear();
    result.map_err(|e| CliError::io("hashing the input file", e))
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
