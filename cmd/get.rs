//! `mftq get`: pull a batch back, verified, into a file (renamed into place only
//! once everything verified) or stdout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::args::GetArgs;
use crate::client::{Client, parse_key};
use crate::error::{CliError, Exit};
use crate::output::{human, mb_per_s, metadata_json, print_json, progress};

/// A temporary file removed when dropped, unless kept.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Retrieves the batch and prints its description.
pub async fn run(args: GetArgs) -> Result<(), CliError> {
    let sender = args
        .sender
        .as_deref()
        .map(|text| parse_key("--sender", text))
        .transpose()?;
    let client = Client::new(&args.client, (&args.tuning).into(), "--from", &args.from)?;
    let json_out = args.client.json;
    let to_stdout = args.output == "-";
    let output = PathBuf::from(&args.output);
    let (dir, name) = if to_stdout {
        (PathBuf::new(), String::new())
    } else {
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| CliError::usage(format!("-o {}: not a file name", args.output)))?;
        let dir = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(CliError::usage(format!(
                "-o {}: directory {} does not exist",
                args.output,
                dir.display()
            )));
        }
        if output.is_dir() {
            return Err(CliError::usage(format!(
                "-o {}: is a directory",
                args.output
            )));
        }
        (dir, name)
    };

    let retriever = mft::Retriever::new(client.manager.clone(), client.config.clone())
        .map_err(|e| CliError::mft("configuring the retriever", e))?;
    let started = Instant::now();
    let got = match &sender {
        Some(sender) => retriever.get_from(sender, args.batch_id.as_bytes()).await,
        None => retriever.get(args.batch_id.as_bytes()).await,
    };
    let (mut batch, info) = got.map_err(|e| get_error(&args.batch_id, e))?;
    let bar = progress(Some(info.size), "receiving", json_out);

    let copied = if to_stdout {
        let mut out = tokio::io::stdout();
        let n = copy(&mut batch, &mut out, &bar).await;
        let flushed = out.flush().await;
        n.and_then(|n| {
            flushed
                .map(|_| n)
                .map_err(|e| CliError::io("writing stdout", e))
        })
    } else {
        let mut suffix = [0u8; 6];
        mft::crypto::fill_random(&mut suffix);
        let temp = TempFile {
            path: dir.join(format!(".{name}.{}.mftq-part", crate::output::hex(&suffix))),
            keep: false,
        };
        let result = write_file(&mut batch, &temp.path, &bar).await;
        match result {
            Ok(n) if n == info.size => {
                tokio::fs::rename(&temp.path, &output)
                    .await
                    .map_err(|e| CliError::io(format!("-o {}", output.display()), e))?;
                let mut temp = temp;
                temp.keep = true;
                Ok(n)
            }
            Ok(n) => Err(CliError::new(
                Exit::Integrity,
                format!(
                    "batch {:?}: got {n} bytes, expected {}",
                    args.batch_id, info.size
                ),
            )),
            Err(e) => Err(e),
        }
    };
    bar.finish_and_clear();
    client.manager.close();
    let bytes = copied?;
    let elapsed = started.elapsed();

    let summary = json!({
        "batch_id": String::from_utf8_lossy(&info.batch_id),
        "size": info.size,
        "segments": info.segment_count,
        "sender": info.sender.to_string(),
        "metadata": metadata_json(&info.metadata),
        "output": args.output,
        "seconds": elapsed.as_secs_f64(),
    });
    // With -o -, stdout carries the data: the description goes to stderr.
    if json_out && !to_stdout {
        print_json(&summary);
    } else if json_out {
        eprintln!("{summary}");
    } else {
        let text = format!(
            "batch {}\nreceived {} in {} segments in {:.2?} ({:.1} MB/s), verified\nsender {}\nmetadata {}",
            String::from_utf8_lossy(&info.batch_id),
            human(bytes),
            info.segment_count,
            elapsed,
            mb_per_s(bytes, elapsed),
            info.sender,
            String::from_utf8_lossy(&info.metadata),
        );
        if to_stdout {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
    Ok(())
}

/// A retrieval failure, with a clear message for an unknown batch.
fn get_error(batch_id: &str, e: mft::Error) -> CliError {
    if e.refuse_code() == Some(mft::wire::RefuseCode::Ambiguous) {
        let mut err = CliError::mft(&format!("retrieving batch {batch_id:?}"), e);
        err.exit = Exit::Usage;
        err.message
            .push_str(" (batch ids are per sender: name one with --sender KEY)");
        return err;
    }
    if e.refuse_code() == Some(mft::wire::RefuseCode::NotFound) {
        let mut err = CliError::mft(&format!("retrieving batch {batch_id:?}"), e);
        err.message =
            format!("no batch {batch_id:?} on the server (or this key may not retrieve it)");
        return err;
    }
    CliError::mft(&format!("retrieving batch {batch_id:?}"), e)
}

/// Writes the batch to a new file at `path`, durably.
async fn write_file(
    batch: &mut mft::BatchReader,
    path: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<u64, CliError> {
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| CliError::io(format!("creating {}", path.display()), e))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let n = copy(batch, &mut out, bar).await?;
    out.flush()
        .await
        .map_err(|e| CliError::io(format!("writing {}", path.display()), e))?;
    out.get_ref()
        .sync_all()
        .await
        .map_err(|e| CliError::io(format!("writing {}", path.display()), e))?;
    Ok(n)
}

/// Copies verified plaintext, advancing the bar. A verification failure (an
/// `InvalidData` read error) is an integrity error.
async fn copy(
    batch: &mut (impl AsyncRead + Unpin),
    out: &mut (impl AsyncWrite + Unpin),
    bar: &indicatif::ProgressBar,
) -> Result<u64, CliError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match batch.read(&mut buf).await {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(CliError::new(
                    Exit::Integrity,
                    format!("the batch failed verification: {e}"),
                ));
            }
            Err(e) => {
                use std::io::ErrorKind as K;
                let exit = match e.kind() {
                    K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe
                    | K::TimedOut
                    | K::UnexpectedEof => Exit::Network,
                    _ => Exit::Other,
                };
                return Err(CliError {
                    exit,
                    message: format!("receiving the batch: {e}"),
                    source: Some(Box::new(e)),
                });
            }
        };
        out.write_all(&buf[..n])
            .await
            .map_err(|e| CliError::io("writing the output", e))?;
        total += n as u64;
        bar.set_position(total);
    }
}
