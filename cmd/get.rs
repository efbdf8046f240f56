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
    // Where it goes may depend on its metadata: checked up front where it can be.
    if let Some(output) = args.output.as_deref().filter(|o| *o != "-") {
        check_output_dir(output)?;
    }

    let retriever = mft::Retriever::new(client.manager.clone(), client.config.clone())
        .map_err(|e| CliError::mft("configuring the retriever", e))?;
    let started = Instant::now();
    let got = match &sender {
        Some(sender) => retriever.get_from(sender, args.batch_id.as_bytes()).await,
        None => retriever.get(args.batch_id.as_bytes()).await,
    };
    let (mut batch, info) = got.map_err(|e| get_error(&args.batch_id, e))?;
    let metadata: Option<serde_json::Value> = serde_json::from_slice(&info.metadata).ok();
    let target = target(args.output.as_deref(), metadata.as_ref(), &args.batch_id)?;
    if let Target::File(path) = &target
        && !args.force
        && std::fs::symlink_metadata(path).is_ok()
    {
        return Err(CliError::usage(format!(
            "{}: exists; --force replaces it",
            path.display()
        )));
    }
    let expected = metadata.as_ref().and_then(expected_sha256);
    let bar = progress(Some(info.size), "receiving", json_out);

    let copied = match &target {
        Target::Stdout => {
            let mut out = tokio::io::stdout();
            let n = copy(&mut batch, &mut out, &bar).await;
            let flushed = out.flush().await;
            let copied = n.and_then(|n| {
                flushed
                    .map(|_| n)
                    .map_err(|e| CliError::io("writing stdout", e))
            });
            copied.and_then(|(n, digest)| check_digest(expected, digest).map(|()| n))
        }
        Target::File(output) => {
            let dir = match output.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let name = output
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut suffix = [0u8; 6];
            mft::crypto::fill_random(&mut suffix);
            let temp = TempFile {
                path: dir.join(format!(".{name}.{}.mftq-part", crate::output::hex(&suffix))),
                keep: false,
            };
            match write_file(&mut batch, &temp.path, &bar).await {
                Ok((n, digest)) if n == info.size => {
                    check_digest(expected, digest)?;
                    if let Some(metadata) = &metadata {
                        restore_attributes(&temp.path, metadata)?;
                    }
                    tokio::fs::rename(&temp.path, output)
                        .await
                        .map_err(|e| CliError::io(format!("{}", output.display()), e))?;
                    let mut temp = temp;
                    temp.keep = true;
                    Ok(n)
                }
                Ok((n, _)) => Err(CliError::new(
                    Exit::Integrity,
                    format!(
                        "batch {:?}: got {n} bytes, expected {}",
                        args.batch_id, info.size
                    ),
                )),
                Err(e) => Err(e),
            }
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
        "output": match &target {
            Target::Stdout => "-".to_string(),
            Target::File(path) => path.display().to_string(),
        },
        "seconds": elapsed.as_secs_f64(),
    });
    // With -o -, stdout carries the data: the description goes to stderr.
    let to_stdout = matches!(target, Target::Stdout);
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

/// Writes the batch to a new file at `path`, durably: its length and SHA-256.
async fn write_file(
    batch: &mut mft::BatchReader,
    path: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<(u64, [u8; 32]), CliError> {
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

/// Copies verified plaintext, advancing the bar: its length and SHA-256. A
/// verification failure (an `InvalidData` read error) is an integrity error.
async fn copy(
    batch: &mut (impl AsyncRead + Unpin),
    out: &mut (impl AsyncWrite + Unpin),
    bar: &indicatif::ProgressBar,
) -> Result<(u64, [u8; 32]), CliError> {
    use sha2::Digest;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut sha = sha2::Sha256::new();
    loop {
        let n = match batch.read(&mut buf).await {
            Ok(0) => return Ok((total, sha.finalize().into())),
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
        sha.update(&buf[..n]);
        out.write_all(&buf[..n])
            .await
            .map_err(|e| CliError::io("writing the output", e))?;
        total += n as u64;
        bar.set_position(total);
    }
}

/// Where a batch goes.
enum Target {
    Stdout,
    File(PathBuf),
}

/// Refuses an `-o` whose directory does not exist, before anything is fetched.
fn check_output_dir(output: &str) -> Result<(), CliError> {
    let path = Path::new(output);
    let dir = if output.ends_with('/') || path.is_dir() {
        path
    } else {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    };
    if !dir.is_dir() {
        return Err(CliError::usage(format!(
            "-o {output}: directory {} does not exist",
            dir.display()
        )));
    }
    Ok(())
}

/// Where `-o` (or its absence) sends the batch, given its metadata: a directory
/// (`DIR/`, or one that exists) or nothing takes the batch's own file name.
fn target(
    output: Option<&str>,
    metadata: Option<&serde_json::Value>,
    batch_id: &str,
) -> Result<Target, CliError> {
    let default_name = || {
        let named = metadata
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or(batch_id);
        safe_file_name(named).ok_or_else(|| {
            CliError::usage(format!(
                "the batch's name {named:?} is not a usable file name; give -o FILE"
            ))
        })
    };
    Ok(match output {
        Some("-") => Target::Stdout,
        Some(o) if o.ends_with('/') || Path::new(o).is_dir() => {
            Target::File(Path::new(o).join(default_name()?))
        }
        Some(o) => {
            if Path::new(o).file_name().is_none() {
                return Err(CliError::usage(format!("-o {o}: not a file name")));
            }
            Target::File(PathBuf::from(o))
        }
        None => Target::File(PathBuf::from(default_name()?)),
    })
}

/// A name from a peer made safe as one file name in the target directory: its
/// last path component (so it never leads elsewhere), control characters
/// replaced; `None` if nothing usable is left.
pub fn safe_file_name(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let cleaned = cleaned.trim().to_string();
    match cleaned.as_str() {
        "" | "." | ".." => None,
        _ => Some(cleaned),
    }
}

/// The SHA-256 the metadata claims, if it claims one.
fn expected_sha256(metadata: &serde_json::Value) -> Option<[u8; 32]> {
    let hex = metadata.get("sha256")?.as_str()?;
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

/// The content's SHA-256 must be the one the metadata claims.
fn check_digest(expected: Option<[u8; 32]>, got: [u8; 32]) -> Result<(), CliError> {
    match expected {
        Some(expected) if expected != got => Err(CliError::new(
            Exit::Integrity,
            format!(
                "the content's SHA-256 is {}, but its metadata says {}",
                crate::output::hex(&got),
                crate::output::hex(&expected)
            ),
        )),
        _ => Ok(()),
    }
}

/// Gives the file the mode (permission bits only) and mtime its metadata records.
fn restore_attributes(path: &Path, metadata: &serde_json::Value) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e| CliError::io(format!("setting the attributes of {}", path.display()), e);
    if let Some(mode) = metadata.get("mode").and_then(|m| m.as_u64()) {
        let mode = u32::try_from(mode & 0o777).unwrap_or(0o600);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    if let Some(mtime) = metadata.get("mtime").and_then(|m| m.as_u64()) {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(when))
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_peers_stay_one_file_name() {
        assert_eq!(safe_file_name("report.pdf").as_deref(), Some("report.pdf"));
        assert_eq!(
            safe_file_name("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(safe_file_name("/abs/x").as_deref(), Some("x"));
        assert_eq!(safe_file_name("a\\b").as_deref(), Some("b"));
        assert_eq!(safe_file_name("bad\nname").as_deref(), Some("bad_name"));
        for unusable in ["", ".", "..", "dir/", "  ", "x/.."] {
            assert_eq!(safe_file_name(unusable), None, "{unusable:?}");
        }
    }

    #[test]
    fn a_claimed_digest_must_match() {
        let digest = [7u8; 32];
        let metadata = serde_json::json!({ "sha256": crate::output::hex(&digest) });
        assert_eq!(expected_sha256(&metadata), Some(digest));
        assert!(check_digest(Some(digest), digest).is_ok());
        assert!(check_digest(Some(digest), [8; 32]).is_err());
        assert_eq!(
            expected_sha256(&serde_json::json!({ "sha256": "zz" })),
            None
        );
    }
}
