//! Where a resumable restore keeps its work: a staging directory inside the
//! target named by the batch's content (its chain hash), and beside it a small
//! state file saying which batch the staged bytes belong to and how many of
//! them are durable. A restore that was cut off picks the directory up again
//! when run again; one left for other content of the same batch (it was
//! replaced), or untouched for a week, is removed.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::stream::BatchInfo;
use crate::wire::ChainHash;
use crate::wire::values::hex;

/// What names the content a staging directory holds: a batch's sender, id and
/// chain hash (from [`BatchInfo`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeKey {
    /// The batch's sender.
    pub sender: flow::PeerKey,
    /// The batch id.
    pub batch_id: Vec<u8>,
    /// The chain hash: names the batch's exact content.
    pub chain: ChainHash,
}

impl From<&BatchInfo> for ResumeKey {
    fn from(info: &BatchInfo) -> Self {
        ResumeKey {
            sender: info.sender,
            batch_id: info.batch_id.clone(),
            chain: info.chain,
        }
    }
}

/// The start of every staging directory's name: hidden, and ours.
pub(super) const STAGING_PREFIX: &str = ".mftq-tree-";
/// The end of a staging directory's name.
const STAGING_SUFFIX: &str = ".part";
/// Added to a staging directory's name for its state file.
const STATE_SUFFIX: &str = ".state";
/// The first line of a state file.
const SCHEMA: &str = "mftq-tree-part/1";

/// Bytes of file data written between two checkpoints (data synced, then the
/// state file).
pub(super) const CHECKPOINT_EVERY: u64 = 32 << 20;

/// Staging directories untouched for this long are another restore's
/// leftovers, removed when a restore into the same directory starts.
const STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// A fresh, random staging directory's path in `root` (for a restore that is
/// not resumed).
pub(super) fn random_path(root: &Path) -> PathBuf {
    let mut suffix = [0u8; 6];
    crate::crypto::fill_random(&mut suffix);
    root.join(format!("{STAGING_PREFIX}{}{STAGING_SUFFIX}", hex(&suffix)))
}

/// The staging directory in `root` for the content `key` names.
pub(super) fn path_for(root: &Path, key: &ResumeKey) -> PathBuf {
    root.join(format!(
        "{STAGING_PREFIX}{}{STAGING_SUFFIX}",
        hex(&key.chain.0[..16])
    ))
}

/// The state file of the staging directory `staging`.
fn state_path(staging: &Path) -> PathBuf {
    let mut name = staging.as_os_str().to_owned();
    name.push(STATE_SUFFIX);
    PathBuf::from(name)
}

/// A state file's text: its schema, the batch it is for, and the bytes of file
/// data that are durable in the staging directory.
fn encode(key: &ResumeKey, durable: u64) -> String {
    format!(
        "{SCHEMA}\nsender {}\nbatch {}\nchain {}\ndurable {durable}\n",
        key.sender,
        hex(&key.batch_id),
        hex(&key.chain.0)
    )
}

/// The fields of a state file's text, if it is one: sender, batch id and chain
/// (as written), and the durable byte count.
fn decode(text: &str) -> Option<([&str; 3], u64)> {
    let mut lines = text.lines();
    if lines.next()? != SCHEMA {
        return None;
    }
    let mut field = |name: &str| lines.next()?.strip_prefix(name)?.strip_prefix(' ');
    let fields = [field("sender")?, field("batch")?, field("chain")?];
    let durable = field("durable")?.parse().ok()?;
    Some((fields, durable))
}

/// The durable byte count the state file of `staging` records, if it records
/// one for the content `key` names.
fn durable_for(staging: &Path, key: &ResumeKey) -> Option<u64> {
    let text = std::fs::read_to_string(state_path(staging)).ok()?;
    let (fields, durable) = decode(&text)?;
    let want = encode(key, durable);
    (decode(&want)?.0 == fields).then_some(durable)
}

/// Records that the first `durable` bytes of file data in `staging` are synced:
/// a new state file, renamed over the old.
pub(super) fn checkpoint(staging: &Path, key: &ResumeKey, durable: u64) -> io::Result<()> {
    let state = state_path(staging);
    let mut temp = state.as_os_str().to_owned();
    temp.push("-new");
    std::fs::write(&temp, encode(key, durable))?;
    std::fs::rename(&temp, &state)
}

/// Removes a staging directory, what is left in it (never following links:
/// `remove_dir_all` removes a link, not what it points to) and its state file.
pub(super) fn remove(staging: &Path) {
    let _ = std::fs::remove_dir_all(staging);
    let state = state_path(staging);
    let _ = std::fs::remove_file(&state);
}

/// Whether `staging` is a directory to resume into: a real directory (not a
/// link to one), closed to other users as [`create`] makes them, and owned by
/// the owner of its state file (which [`open`] has just rewritten, so by this
/// process's user).
fn is_ours(staging: &Path) -> bool {
    let Ok(state) = std::fs::symlink_metadata(state_path(staging)) else {
        return false;
    };
    std::fs::symlink_metadata(staging)
        .is_ok_and(|m| m.file_type().is_dir() && m.uid() == state.uid() && m.mode() & 0o077 == 0)
}

/// Creates the staging directory `staging`, closed to other users.
pub(super) fn create(staging: &Path) -> io::Result<()> {
    std::fs::create_dir(staging)?;
    std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o700))
}

/// A staging directory taken for one restore: an exclusive lock on it, held
/// while the restore uses it, so a second restore of the same content into the
/// same directory is told, not let to write into it too.
#[derive(Debug)]
pub(super) struct Taken {
    /// The locked directory: closing it ends the lock.
    _dir: std::fs::File,
}

/// Takes the directory `staging` (never through a link), or says another
/// restore holds it.
fn take(staging: &Path) -> io::Result<Taken> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(staging)?;
    match dir.try_lock() {
        Ok(()) => Ok(Taken { _dir: dir }),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another restore of this batch is using this staging directory now; \
             wait for it to end, or stop it",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The staging directory in `root` for `key`, taken, ready to resume into: the
/// durable byte count its state records, or 0 for a directory just created
/// (whatever was at its name before, if not a resumable staging directory of
/// ours, is removed; one another restore holds is an error of kind
/// `WouldBlock`). Stale staging directories in `root` are removed first.
pub(super) fn open(root: &Path, key: &ResumeKey) -> io::Result<(PathBuf, u64, Taken)> {
    let staging = path_for(root, key);
    remove_stale(root, key, &staging);
    let is_real_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_dir());
    if is_real_dir(&staging) {
        // Nothing is changed in it, or removed, before it is ours alone.
        let taken = take(&staging)?;
        if let Some(durable) = durable_for(&staging, key) {
            // Rewritten, the state file is this user's: the directory must be too.
            checkpoint(&staging, key, durable)?;
            if is_ours(&staging) {
                return Ok((staging, durable, taken));
            }
        }
    }
    let taken = recreate(&staging, key)?;
    Ok((staging, 0, taken))
}

/// Replaces whatever is at `staging` with a new, empty staging directory for
/// `key`, taken.
pub(super) fn recreate(staging: &Path, key: &ResumeKey) -> io::Result<Taken> {
    remove(staging);
    create(staging)?;
    let taken = take(staging)?;
    checkpoint(staging, key, 0)?;
    Ok(taken)
}

/// What a resumable restore of the content `key` names left in `root`: its
/// staging directory and the bytes of file data durable there, if any. For a
/// caller to tell its user that running again resumes.
pub fn staged(root: &Path, key: &ResumeKey) -> Option<(PathBuf, u64)> {
    let staging = path_for(root, key);
    if !is_ours(&staging) {
        return None;
    }
    durable_for(&staging, key).map(|durable| (staging, durable))
}

/// Removes, in `root`, every staging directory (and state file) but `keep`
/// that is for other content of the same batch as `key`, or untouched for
/// [`STALE_AFTER`].
fn remove_stale(root: &Path, key: &ResumeKey, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let now = SystemTime::now();
    let same_batch = |staging: &Path| {
        std::fs::read_to_string(state_path(staging))
            .ok()
            .and_then(|text| {
                let (fields, durable) = decode(&text)?;
                let ours = encode(key, durable);
                let (want, _) = decode(&ours)?;
                Some(fields[..2] == want[..2])
            })
            .unwrap_or(false)
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name
            .strip_suffix(STATE_SUFFIX)
            .unwrap_or(&name)
            .strip_prefix(STAGING_PREFIX)
            .and_then(|s| s.strip_suffix(STAGING_SUFFIX))
        else {
            continue;
        };
        if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let staging = root.join(format!("{STAGING_PREFIX}{stem}{STAGING_SUFFIX}"));
        if staging == keep {
            continue;
        }
        // Touched when its state is recorded, or an entry is made in it.
        let newest = [staging.clone(), state_path(&staging)]
            .iter()
            .filter_map(|p| std::fs::symlink_metadata(p).ok()?.modified().ok())
            .max();
        let untouched = newest
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if untouched || same_batch(&staging) {
            // One that another restore holds is left to it.
            match take(&staging) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => remove(&staging),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key of one sender's.
    fn key(batch: &[u8], chain: u8) -> ResumeKey {
        static SENDER: std::sync::OnceLock<flow::PeerKey> = std::sync::OnceLock::new();
        ResumeKey {
            sender: *SENDER.get_or_init(|| flow::Identity::generate().public_key()),
            batch_id: batch.to_vec(),
            chain: ChainHash([chain; 64]),
        }
    }

    #[test]
    fn a_state_file_reads_back_only_for_its_content() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path();
        let k = key(b"monday", 1);
        let (staging, durable, _) = open(root, &k).expect("opens");
        assert_eq!(durable, 0);
        checkpoint(&staging, &k, 12_345).expect("records");
        assert_eq!(staged(root, &k), Some((staging.clone(), 12_345)));
        assert_eq!(open(root, &k).expect("opens").1, 12_345);
        // Another batch, or other content, does not read it.
        assert_eq!(durable_for(&staging, &key(b"tuesday", 1)), None);
        assert_eq!(durable_for(&staging, &key(b"monday", 2)), None);
        // A damaged state file starts afresh.
        std::fs::write(state_path(&staging), "mftq-tree-part/1\nsender x\n").expect("writes");
        assert_eq!(open(root, &k).expect("opens").1, 0);
    }

    #[test]
    fn a_staging_directory_not_ours_is_never_resumed_into() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path();
        let k = key(b"monday", 1);
        let (staging, _, _) = open(root, &k).expect("opens");
        checkpoint(&staging, &k, 99).expect("records");
        // Open to others: not resumed.
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(staged(root, &k), None);
        assert_eq!(open(root, &k).expect("opens").1, 0);
        // A link in its place: removed, never followed.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::fs::write(elsewhere.join("keep.txt"), b"x").expect("writes");
        remove(&staging);
        std::os::unix::fs::symlink(&elsewhere, &staging).expect("links");
        checkpoint(&staging, &k, 99).expect("records");
        assert_eq!(open(root, &k).expect("opens").1, 0);
        assert!(
            std::fs::symlink_metadata(&staging)
                .expect("exists")
                .is_dir()
        );
        assert!(
            elsewhere.join("keep.txt").exists(),
            "what the link named is kept"
        );
    }

    #[test]
    fn a_staging_directory_in_use_is_neither_shared_nor_removed() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path();
        let k = key(b"monday", 1);
        let (staging, _, held) = open(root, &k).expect("opens");
        let second = open(root, &k).expect_err("taken already");
        assert_eq!(second.kind(), io::ErrorKind::WouldBlock, "{second}");
        // Nor does a restore of the batch's new content remove it while held.
        drop(open(root, &key(b"monday", 2)).expect("opens"));
        assert!(staging.exists(), "held, so kept");
        drop(held);
        assert_eq!(open(root, &k).expect("free again").0, staging);
    }

    #[test]
    fn stale_staging_goes_and_others_stay() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path();
        let old_content = key(b"monday", 1);
        let other_batch = key(b"tuesday", 2);
        let (replaced, _, _) = open(root, &old_content).expect("opens");
        let (other, _, _) = open(root, &other_batch).expect("opens");
        let aged = random_path(root);
        create(&aged).expect("creates");
        let long_ago = SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
        std::fs::File::open(&aged)
            .and_then(|d| d.set_modified(long_ago))
            .expect("sets the mtime");
        let fresh = random_path(root);
        create(&fresh).expect("creates");
        let not_ours = root.join(".mftq-tree-notes");
        std::fs::write(&not_ours, b"x").expect("writes");
        // The batch was replaced: its new content's restore removes the old.
        let (current, _, _) = open(root, &key(b"monday", 3)).expect("opens");
        for gone in [&replaced, &aged] {
            assert!(!gone.exists(), "{} is removed", gone.display());
        }
        assert!(!state_path(&replaced).exists());
        for kept in [&current, &other, &fresh, &not_ours] {
            assert!(kept.exists(), "{} is kept", kept.display());
        }
    }
}
