//! `mftq get`: pull a batch back, verified, into a file or stdout. A file is
//! written to a part file beside it and renamed into place only once everything
//! verified; a `get` that was cut off resumes from its part file when run again.
//! `--range` fetches part of a batch; a tree batch is restored into a directory
//! (see `tree`).

mod part;
mod tree;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::args::GetArgs;
use crate::client::{Client, parse_key};
use crate::error::{CliError, Exit};
use crate::output::{human, metadata_json, print_json, progress, rate};
use part::{PartFile, PartOf};

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

/// What was fetched, for the summary.
struct Fetched {
    /// Bytes that crossed the network.
    fetched: u64,
    /// Where the fetch resumed a part file (0: from the start).
    resumed_from: u64,
}

/// Retrieves the batch (or a range of it) and prints its description.
pub async fn run(args: GetArgs) -> Result<(), CliError> {
    let sender = args
        .sender
        .as_deref()
        .map(|text| parse_key("--sender", text))
        .transpose()?;
    let range = args.range.as_deref().map(parse_range).transpose()?;
    let client = Client::new(
        &args.client,
        (&args.tuning).into(),
        "--from",
        args.from.as_deref(),
    )
    .await?;
    let json_out = args.client.json;
    // Where it goes may depend on its metadata: checked up front where it can be.
    if let Some(output) = args.output.as_deref().filter(|o| *o != "-") {
        check_output_dir(output)?;
    }

    let retriever = mft::Retriever::new(client.manager.clone(), client.config.clone())
        .map_err(|e| CliError::mft("configuring the retriever", e))?;
    let _retries = crate::output::AbortOnDrop(crate::output::follow_retries(
        retriever.subscribe(),
        client.retries,
    ));
    let mut request = mft::Pull::batch(args.batch_id.as_bytes());
    if let Some(sender) = sender {
        request = request.sender(sender);
    }
    let pull = |request: mft::Pull| {
        let retriever = &retriever;
        let batch_id = args.batch_id.clone();
        async move {
            retriever
                .pull(&request)
                .await
                .map_err(|e| get_error(&batch_id, e))
        }
    };
    let started = Instant::now();
    // A range with an end is asked for at once; otherwise the batch's size (and,
    // for a resume, where its part file ends) is known only from its description.
    // --list and --file need only the description (and then the manifest), so
    // they ask for the first byte.
    let tree_only = args.list || args.file.is_some();
    let first = match range {
        Some((start, Some(end))) => request.clone().range(start..end),
        None if tree_only => request.clone().range(0..1),
        _ => request.clone(),
    };
    let (batch, info) = match retriever.pull(&first).await {
        // An empty batch has no first byte, and is no tree either.
        Err(e) if tree_only && e.refuse_code() == Some(mft::wire::RefuseCode::BadRange) => {
            return Err(not_a_tree(&args.batch_id));
        }
        pulled => pulled.map_err(|e| get_error(&args.batch_id, e))?,
    };
    let metadata: Option<serde_json::Value> = serde_json::from_slice(&info.metadata).ok();
    if tree_only && !tree::is_tree(metadata.as_ref()) {
        return Err(not_a_tree(&args.batch_id));
    }
    if range.is_none() && tree::is_tree(metadata.as_ref()) {
        drop(batch);
        let batch = tree::TreeBatch {
            retriever: &retriever,
            request: &request,
            info: &info,
            metadata: metadata.as_ref(),
        };
        let done = tree::get(&args, &batch, started).await;
        client.manager.close();
        return done;
    }
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

    let copied = match range {
        Some((start, end)) => {
            let (batch, info) = match end {
                Some(_) => (batch, info),
                None if start == 0 => (batch, info),
                None => {
                    drop(batch);
                    let (batch, info) = pull(request.clone().range(start..info.size)).await?;
                    (batch, info)
                }
            };
            let len = info.range.end - info.range.start;
            let bar = progress(Some(len), "receiving", json_out);
            let copied = write_plain(batch, &target, &bar)
                .await
                .map(|(n, _)| Fetched {
                    fetched: n,
                    resumed_from: 0,
                });
            bar.finish_and_clear();
            copied.map(|fetched| (fetched, info))
        }
        None => {
            let bar = progress(Some(info.size), "receiving", json_out);
            let copied = match &target {
                Target::Stdout => {
                    let expected = metadata.as_ref().and_then(expected_sha256);
                    write_plain(batch, &target, &bar)
                        .await
                        .and_then(|(n, digest)| check_digest(expected, digest).map(|()| n))
                        .map(|n| Fetched {
                            fetched: n,
                            resumed_from: 0,
                        })
                }
                Target::File(path) => {
                    let of = PartOf {
                        sender: &info.sender,
                        batch_id: &info.batch_id,
                        chain: &info.chain,
                        size: info.size,
                    };
                    let reopen = |from: u64| pull(request.clone().range(from..info.size));
                    write_resumable(batch, path, &of, metadata.as_ref(), reopen, &bar).await
                }
            };
            bar.finish_and_clear();
            copied.map(|fetched| (fetched, info))
        }
    };
    client.manager.close();
    let (fetched, info) = copied?;
    let elapsed = started.elapsed();
    let bytes = info.range.end - info.range.start;

    let mut summary = json!({
        "schema": "mftq-get/1",
        "batch_id": String::from_utf8_lossy(&info.batch_id),
        "size": info.size,
        "segments": info.segment_count,
        "sender": info.sender.to_string(),
        "metadata": metadata_json(&info.metadata),
        "chain": crate::output::hex(&info.chain.0),
        "output": match &target {
            Target::Stdout => "-".to_string(),
            Target::File(path) => path.display().to_string(),
        },
        "fetched": fetched.fetched,
        "resumed_from": fetched.resumed_from,
        "seconds": elapsed.as_secs_f64(),
    });
    if range.is_some() {
        summary["range"] = json!({ "start": info.range.start, "end": info.range.end });
    }
    // With -o -, stdout carries the data: the description goes to stderr.
    let to_stdout = matches!(target, Target::Stdout);
    if json_out && !to_stdout {
        print_json(&summary);
    } else if json_out {
        eprintln!("{summary}");
    } else if !crate::output::quiet() {
        let what = match range {
            Some(_) => format!(
                "bytes {}-{} of {}",
                info.range.start,
                info.range.end.saturating_sub(1),
                human(info.size)
            ),
            None => format!("{} in {} segments", human(bytes), info.segment_count),
        };
        let resumed = match fetched.resumed_from {
            0 => String::new(),
            from => format!(
                "; resumed a part file at {}, fetched {}",
                human(from),
                human(fetched.fetched)
            ),
        };
        let text = format!(
            "received {:?}: {what} in {:.2?} ({}), verified{resumed}\nmetadata {}",
            String::from_utf8_lossy(&info.batch_id),
            elapsed,
            rate(fetched.fetched, elapsed),
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

/// `--range START-END` (bytes, END included, as in HTTP) or `START-` (to the
/// end): the start and the end exclusive, if given.
fn parse_range(text: &str) -> Result<(u64, Option<u64>), CliError> {
    let bad = |why: &str| CliError::usage(format!("--range {text}: {why}"));
    let (start, end) = text
        .split_once('-')
        .ok_or_else(|| bad("expected START-END or START- (byte offsets)"))?;
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| bad(&format!("{s:?} is not a byte offset")))
    };
    let start = number(start)?;
    if end.trim().is_empty() {
        return Ok((start, None));
    }
    let last = number(end)?;
    if last < start {
        return Err(bad("END is before START"));
    }
    let end = last
        .checked_add(1)
        .ok_or_else(|| bad("END is past any batch"))?;
    Ok((start, Some(end)))
}

/// `--list` or `--file` of a batch that is one file.
fn not_a_tree(batch_id: &str) -> CliError {
    CliError::usage(format!(
        "batch {batch_id:?} is one file, not a tree: --list and --file are for trees \
         (sent as several files or a directory)"
    ))
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

/// Writes verified plaintext to stdout, or to a new file at the target (through a
/// temporary name, renamed once it all arrived): its length and SHA-256.
async fn write_plain(
    mut batch: mft::BatchReader,
    target: &Target,
    bar: &indicatif::ProgressBar,
) -> Result<(u64, [u8; 32]), CliError> {
    match target {
        Target::Stdout => {
            let mut out = tokio::io::stdout();
            let mut sink = Plain::new(&mut out);
            let n = copy(&mut batch, &mut sink, bar).await?;
            let digest = sink.sha.finalize().into();
            out.flush()
                .await
                .map_err(|e| CliError::io("writing stdout", e))?;
            Ok((n, digest))
        }
        Target::File(output) => {
            let (dir, name) = dir_and_name(output);
            let mut suffix = [0u8; 6];
            mft::crypto::fill_random(&mut suffix);
            let mut temp = TempFile {
                path: dir.join(format!(".{name}.{}.tmp", crate::output::hex(&suffix))),
                keep: false,
            };
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp.path)
                .await
                .map_err(|e| CliError::io(format!("creating {}", temp.path.display()), e))?;
            let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
            let mut sink = Plain::new(&mut out);
            let n = copy(&mut batch, &mut sink, bar).await?;
            let digest = sink.sha.finalize().into();
            let io = |e| CliError::io(format!("writing {}", output.display()), e);
            out.flush().await.map_err(io)?;
            out.get_ref().sync_all().await.map_err(io)?;
            tokio::fs::rename(&temp.path, output).await.map_err(io)?;
            temp.keep = true;
            Ok((n, digest))
        }
    }
}

/// Writes the whole batch to `path` through its part file: resuming one that
/// holds a verified start of this batch (fetching only the rest, by `reopen`
/// from an offset), keeping it on a failure that a re-run can resume, and
/// removing it when its data fails verification. The SHA-256 of the whole file
/// is checked against the metadata's; a resumed file that fails it is fetched
/// once more from the start.
async fn write_resumable<F, Fut>(
    batch: mft::BatchReader,
    path: &Path,
    of: &PartOf<'_>,
    metadata: Option<&serde_json::Value>,
    reopen: F,
    bar: &indicatif::ProgressBar,
) -> Result<Fetched, CliError>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(mft::BatchReader, mft::BatchInfo), CliError>>,
{
    let expected = metadata.and_then(expected_sha256);
    let mut first = Some(batch);
    loop {
        let (mut part, resumed_from) = PartFile::open(path, of).await?;
        let whole = first.take();
        let reader = match (resumed_from, whole) {
            (0, Some(whole)) => Some(whole),
            (0, None) => Some(reopen(0).await?.0),
            (from, _) if from == of.size => None,
            (from, _) => {
                crate::output::note_above(
                    bar,
                    format!(
                        "resuming {} from {} of {}",
                        path.display(),
                        human(from),
                        human(of.size)
                    ),
                );
                Some(reopen(from).await?.0)
            }
        };
        crate::output::resumed_at(bar, resumed_from);
        let mut fetched = 0;
        if let Some(mut reader) = reader {
            let copied = tokio::select! {
                copied = copy(&mut reader, &mut part, bar) => copied,
                _ = tokio::signal::ctrl_c() => Err(CliError::new(
                    Exit::Interrupted,
                    format!("interrupted while receiving {}", path.display()),
                )),
            };
            match copied {
                Ok(n) => fetched = n,
                Err(e) if e.exit == Exit::Integrity => {
                    part.discard();
                    return Err(e);
                }
                Err(mut e) => {
                    if part.checkpoint().await.is_ok() && part.written() > 0 {
                        e.message.push_str(&format!(
                            "; {} of {} are kept in {}: run the same command again to resume",
                            human(part.written()),
                            human(of.size),
                            part.path().display()
                        ));
                    }
                    return Err(e);
                }
            }
        }
        let digest = part.close().await?;
        if part.written() != of.size {
            let written = part.written();
            part.discard();
            return Err(CliError::new(
                Exit::Integrity,
                format!("got {written} bytes, expected {}", of.size),
            ));
        }
        if let Err(e) = check_digest(expected, digest) {
            part.discard();
            if resumed_from > 0 {
                crate::output::note_above(
                    bar,
                    format!(
                        "the resumed part file of {} did not verify; fetching it all again",
                        path.display()
                    ),
                );
                continue;
            }
            return Err(e);
        }
        if let Some(metadata) = metadata {
            restore_attributes(part.path(), metadata)?;
        }
        part.finish(path)?;
        return Ok(Fetched {
            fetched,
            resumed_from,
        });
    }
}

/// Where verified bytes go as they arrive.
trait Sink {
    /// Takes the next bytes.
    async fn put(&mut self, bytes: &[u8]) -> Result<(), CliError>;
}

impl Sink for PartFile {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.write(bytes).await
    }
}

/// A writer, and the SHA-256 of what went into it.
struct Plain<W> {
    out: W,
    sha: sha2::Sha256,
}

impl<W> Plain<W> {
    fn new(out: W) -> Self {
        Plain {
            out,
            sha: sha2::Sha256::new(),
        }
    }
}

impl<W: AsyncWrite + Unpin> Sink for Plain<W> {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.sha.update(bytes);
        self.out
            .write_all(bytes)
            .await
            .map_err(|e| CliError::io("writing the output", e))
    }
}

/// Copies verified plaintext into `sink`, advancing the bar: the bytes copied. A
/// verification failure (an `InvalidData` read error) is an integrity error.
async fn copy(
    batch: &mut (impl AsyncRead + Unpin),
    sink: &mut impl Sink,
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
        sink.put(&buf[..n]).await?;
        total += n as u64;
        bar.inc(n as u64);
    }
}

/// The directory and file name of `path`.
fn dir_and_name(path: &Path) -> (PathBuf, String) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, name)
}

/// Where a batch goes.
enum Target {
    Stdout,
    File(PathBuf),
}

/// Refuses an `-o` that cannot be written, before anything is fetched: the
/// directory it names or writes in must exist (`DIR/` may be missing if its
/// parent exists, since a tree batch creates it).
fn check_output_dir(output: &str) -> Result<(), CliError> {
    let path = Path::new(output);
    let dir = if path.is_dir() {
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
        Some(o) if Path::new(o).is_dir() => Target::File(Path::new(o).join(default_name()?)),
        Some(o) if o.ends_with('/') => {
            return Err(CliError::usage(format!(
                "-o {o}: directory does not exist (only a tree batch creates it)"
            )));
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
    fn ranges_parse_as_in_http() {
        assert_eq!(parse_range("0-0").ok(), Some((0, Some(1))));
        assert_eq!(parse_range("100-199").ok(), Some((100, Some(200))));
        assert_eq!(parse_range("5-").ok(), Some((5, None)));
        for bad in ["", "5", "-5", "9-3", "a-b", "1-x", "0-18446744073709551615"] {
            let err = parse_range(bad).expect_err(bad);
            assert!(err.message.contains("--range"), "{bad}: {}", err.message);
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
