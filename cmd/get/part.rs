//! A download's part file: the verified bytes received so far, beside a small
//! state file saying which batch they belong to and how many of them are
//! durable. A `get` that was cut off resumes from there when run again; one for
//! other content (the batch was replaced) or left by an old version starts afresh
//! and removes the stale files.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use crate::error::CliError;
use crate::output::hex;

/// Bytes written between two checkpoints (data synced, then the state file).
const CHECKPOINT_EVERY: u64 = 32 << 20;

/// Part files untouched for this long are another download's leftovers, removed
/// when a `get` writes into their directory.
const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// The suffix of part files; their state files add [`STATE_SUFFIX`].
const PART_SUFFIX: &str = ".mftq-part";
const STATE_SUFFIX: &str = ".state";

/// What the state file records.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct PartState {
    /// `mftq-part/1`.
    schema: String,
    /// The batch's sender (hex).
    sender: String,
    /// The batch id.
    batch_id: String,
    /// The batch's chain hash (hex): names its exact content.
    chain: String,
    /// The batch's size.
    size: u64,
    /// Bytes at the start of the part file that are synced and were verified.
    verified: u64,
}

const SCHEMA: &str = "mftq-part/1";

/// The batch a part file is for.
pub struct PartOf<'a> {
    pub sender: &'a flow::PeerKey,
    pub batch_id: &'a [u8],
    pub chain: &'a mft::wire::ChainHash,
    pub size: u64,
}

/// A part file being written.
pub struct PartFile {
    path: PathBuf,
    state_path: PathBuf,
    out: tokio::io::BufWriter<tokio::fs::File>,
    state: PartState,
    /// Bytes written, durable or not.
    written: u64,
    sha: sha2::Sha256,
}

impl PartFile {
    /// The part file for `target`: a matching one resumed (its SHA-256 so far
    /// recomputed), or a fresh one. Stale part files in the directory, and any of
    /// the target's for other content, are removed first. Returns the file and
    /// the offset it resumes from.
    pub async fn open(target: &Path, of: &PartOf<'_>) -> Result<(PartFile, u64), CliError> {
        let (dir, name) = super::dir_and_name(target);
        let path = dir.join(format!(".{name}{PART_SUFFIX}"));
        let state_path = dir.join(format!(".{name}{PART_SUFFIX}{STATE_SUFFIX}"));
        remove_stale(&dir, &name, &path);
        let wanted = PartState {
            schema: SCHEMA.into(),
            sender: of.sender.to_string(),
            batch_id: String::from_utf8_lossy(of.batch_id).into_owned(),
            chain: hex(&of.chain.0),
            size: of.size,
            verified: 0,
        };
        let resumable = std::fs::read(&state_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<PartState>(&bytes).ok())
            .filter(|held| {
                PartState {
                    verified: 0,
                    ..held.clone()
                } == wanted
            })
            .map(|held| held.verified)
            .filter(|&verified| {
                verified <= of.size
                    && std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() >= verified)
            });
        let io = |e| CliError::io(format!("opening {}", path.display()), e);
        // Never through a link, and one get at a time: a second one is told,
        // not let to write into the same part file.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
            let _ = std::fs::remove_file(&path);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        lock(&file, &path)?;
        let (file, verified, sha) = match resumable {
            Some(verified) if verified > 0 => {
                // Bytes after the checkpoint may not have reached the disk.
                file.set_len(verified).map_err(io)?;
                let (file, sha) = tokio::task::spawn_blocking(move || hash_prefix(file))
                    .await
                    .map_err(|e| CliError::io("hashing the part file", std::io::Error::other(e)))?
                    .map_err(io)?;
                (file, verified, sha)
            }
            _ => {
                let _ = std::fs::remove_file(&state_path);
                file.set_len(0).map_err(io)?;
                (file, 0, sha2::Sha256::new())
            }
        };
        let mut file = tokio::fs::File::from_std(file);
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(verified))
            .await
            .map_err(io)?;
        let part = PartFile {
            path,
            state_path,
            out: tokio::io::BufWriter::with_capacity(1 << 20, file),
            state: PartState { verified, ..wanted },
            written: verified,
            sha,
        };
        Ok((part, verified))
    }

    /// Appends verified bytes; every [`CHECKPOINT_EVERY`] bytes they are synced
    /// and the state file records them.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.out
            .write_all(bytes)
            .await
            .map_err(|e| CliError::io(format!("writing {}", self.path.display()), e))?;
        self.sha.update(bytes);
        self.written += bytes.len() as u64;
        if self.written - self.state.verified >= CHECKPOINT_EVERY {
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Bytes written so far, from the start of the batch.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes what was written durable and records it, so a later `get` resumes
    /// from here.
    pub async fn checkpoint(&mut self) -> Result<(), CliError> {
        let io = |e| CliError::io("saving the part file", e);
        self.out.flush().await.map_err(io)?;
        self.out.get_ref().sync_data().await.map_err(io)?;
        self.state.verified = self.written;
        let temp = self.state_path.with_extension("state-new");
        let text = serde_json::to_vec(&self.state).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&temp, text).map_err(io)?;
        std::fs::rename(&temp, &self.state_path).map_err(io)
    }

    /// The SHA-256 of everything written, and the file, synced, for the caller
    /// to check and then [`PartFile::finish`] or [`PartFile::discard`].
    pub async fn close(&mut self) -> Result<[u8; 32], CliError> {
        let io = |e| CliError::io(format!("writing {}", self.path.display()), e);
        self.out.flush().await.map_err(io)?;
        self.out.get_ref().sync_all().await.map_err(io)?;
        Ok(self.sha.clone().finalize().into())
    }

    /// Where the bytes are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the finished file to `target` and removes the state file.
    pub fn finish(self, target: &Path) -> Result<(), CliError> {
        std::fs::rename(&self.path, target)
            .map_err(|e| CliError::io(format!("{}", target.display()), e))?;
        let _ = std::fs::remove_file(&self.state_path);
        Ok(())
    }

    /// Removes the part file and its state: what it holds is not to be resumed.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.state_path);
    }
}

/// Takes the part file `file` (at `path`) for this process alone, or says that
/// another `get` is writing it.
fn lock(file: &std::fs::File, path: &Path) -> Result<(), CliError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(CliError::usage(format!(
            "another mftq get is writing {} now; wait for it to end, or stop it",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(CliError::io(format!("locking {}", path.display()), e))
        }
    }
}

/// Reads `file` from its start: the file (positioned at its end) and the
/// SHA-256 state of what it holds.
fn hash_prefix(mut file: std::fs::File) -> std::io::Result<(std::fs::File, sha2::Sha256)> {
    use std::io::Read;
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((file, sha));
        }
        sha.update(&buf[..n]);
    }
}

/// Removes, in `dir`, part files of `name` in the older naming
/// (`.NAME.<hex>.mftq-part`, one per attempt, never resumed) and any part file
/// with its state untouched for [`STALE_AFTER`]. `keep` (the current one) stays.
fn remove_stale(dir: &Path, name: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let old_prefix = format!(".{name}.");
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !file_name.starts_with('.') || path == keep {
            continue;
        }
        let Some(stem) = file_name
            .strip_suffix(STATE_SUFFIX)
            .unwrap_or(&file_name)
            .strip_suffix(PART_SUFFIX)
        else {
            continue;
        };
        let older_naming = stem.strip_prefix(&old_prefix).is_some_and(|suffix| {
            suffix.len() == 12 && suffix.bytes().all(|b| b.is_ascii_hexdigit())
        });
        let untouched = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age > STALE_AFTER);
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && (older_naming || untouched) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_part_file_is_written_by_one_get_at_a_time() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let target = tmp.path().join("big.iso");
        let sender = flow::Identity::generate().public_key();
        let chain = mft::wire::ChainHash([3; 64]);
        let of = PartOf {
            sender: &sender,
            batch_id: b"big.iso",
            chain: &chain,
            size: 1000,
        };
        let (mut first, from) = PartFile::open(&target, &of).await.expect("opens");
        assert_eq!(from, 0);
        first.write(b"verified bytes").await.expect("writes");
        first.checkpoint().await.expect("records");
        let Err(second) = PartFile::open(&target, &of).await else {
            panic!("a second get opened the same part file");
        };
        assert!(
            second.message.contains("another mftq get is writing"),
            "{}",
            second.message
        );
        drop(first);
        let (_, from) = PartFile::open(&target, &of).await.expect("free again");
        assert_eq!(from, 14, "and resumed from what the first recorded");
    }

    #[test]
    fn stale_part_files_go_and_others_stay() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let touch = |name: &str| {
            std::fs::write(dir.join(name), b"x").expect("writes");
            dir.join(name)
        };
        let old = touch(".report.pdf.0123456789ab.mftq-part");
        let current = touch(".report.pdf.mftq-part");
        let other = touch(".other.bin.mftq-part");
        let mine = touch("report.pdf");
        let not_ours = touch(".report.pdf.notes");
        let aged = touch(".aged.iso.mftq-part");
        let aged_state = touch(".aged.iso.mftq-part.state");
        let long_ago = SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
        for path in [&aged, &aged_state] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(long_ago))
                .expect("sets the mtime");
        }
        remove_stale(dir, "report.pdf", &current);
        for gone in [&old, &aged, &aged_state] {
            assert!(!gone.exists(), "{} is removed", gone.display());
        }
        for kept in [&current, &other, &mine, &not_ours] {
            assert!(kept.exists(), "{} is kept", kept.display());
        }
    }
}
