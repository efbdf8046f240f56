//! The retrieving side of a tree: restoring a checked manifest and its files'
//! bytes into a directory, through a staging directory inside it, so that
//! nothing is written outside the target, nothing half-verified appears in it,
//! and nothing there is replaced unless asked.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::TreeError;
use super::check::CheckOptions;
use super::manifest::{EntryKind, Manifest};
use super::staging::{self, CHECKPOINT_EVERY, ResumeKey};

/// How a restore treats what is in the target already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Replace files (and links) at the entries' paths. Directories are always
    /// merged into; a directory is never replaced by a file, nor a file by a
    /// directory, and a link on the way to an entry is never followed.
    pub force: bool,
    /// Refuse manifests with names that collide when case is ignored.
    pub case_insensitive: bool,
}

/// A restore under way: the manifest checked against itself and against what
/// the target holds, files written to a staging directory inside the target.
///
/// A restore made by [`Restore::new`] stages into a fresh directory and, dropped
/// before [`Restore::finish`], removes it. One made by [`Restore::resumable`]
/// stages into the directory named by the batch's content and records, every
/// 32 MiB and when the data stops, how much of it is
/// durable: dropped unfinished it keeps what it staged (unless that failed
/// verification), and the next resumable restore of the same content goes on
/// from there.
#[derive(Debug)]
pub struct Restore {
    root: PathBuf,
    staging: PathBuf,
    manifest: Manifest,
    force: bool,
    finished: bool,
    /// Set for a resumable restore.
    resume: Option<Resumable>,
    /// Remove the staging directory when dropped unfinished, even if
    /// resumable: what it holds is not to be resumed.
    discard: bool,
}

/// What a resumable restore knows of its staging directory.
#[derive(Debug)]
struct Resumable {
    /// The content it holds.
    key: ResumeKey,
    /// Bytes of file data (from the batch's start) synced and recorded.
    durable: u64,
    /// Bytes of file data staged and whole when the restore began: where the
    /// data to write resumes.
    from: u64,
    /// Bytes written between two checkpoints.
    checkpoint_every: u64,
    /// The staging directory is this restore's alone while this is held.
    _taken: staging::Taken,
}

impl Restore {
    /// Prepares restoring `manifest` into the directory `root` (which must
    /// exist), through a fresh staging directory. Refuses, before anything is
    /// written: a manifest that fails [`Manifest::check`]; an entry whose path
    /// in `root` passes through a symbolic link or a non-directory; and an
    /// entry whose path exists already (a directory may, if the entry is one
    /// too), unless `force` allows replacing it.
    pub fn new(
        root: &Path,
        manifest: Manifest,
        options: RestoreOptions,
    ) -> Result<Self, TreeError> {
        check_target(root, &manifest, options)?;
        let staging = staging::random_path(root);
        staging::create(&staging).map_err(TreeError::io(&staging))?;
        let restore = Restore {
            root: root.to_path_buf(),
            staging,
            manifest,
            force: options.force,
            finished: false,
            resume: None,
            discard: false,
        };
        restore.make_dirs()?;
        Ok(restore)
    }

    /// Prepares restoring `manifest` into `root` as [`Restore::new`] does (with
    /// the same refusals), through the staging directory for the content `key`
    /// names: what an earlier restore of that content left there, synced and
    /// whole, is kept, and [`Restore::resume_from`] says where the data to
    /// write begins. Staging directories in `root` for other content of the
    /// same batch, or untouched for a week, are removed.
    pub fn resumable(
        root: &Path,
        manifest: Manifest,
        options: RestoreOptions,
        key: ResumeKey,
    ) -> Result<Self, TreeError> {
        check_target(root, &manifest, options)?;
        let (staging, durable, taken) = staging::open(root, &key).map_err(TreeError::io(root))?;
        let mut restore = Restore {
            root: root.to_path_buf(),
            staging,
            manifest,
            force: options.force,
            finished: false,
            resume: Some(Resumable {
                key,
                durable,
                from: 0,
                checkpoint_every: CHECKPOINT_EVERY,
                _taken: taken,
            }),
            discard: false,
        };
        if restore.make_dirs().is_err() {
            // Something else is where a directory goes: start afresh.
            restore.start_afresh()?;
        }
        let from = restore.staged_whole(durable)?;
        if let Some(resume) = restore.resume.as_mut() {
            resume.from = from;
        }
        Ok(restore)
    }

    /// The manifest being restored.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Bytes of file data, from the batch's start, that are staged already: the
    /// data given to [`Restore::write_data`] must begin there. Zero unless
    /// resumed.
    pub fn resume_from(&self) -> u64 {
        self.resume.as_ref().map_or(0, |r| r.from)
    }

    /// Where the entries are staged before they are moved into place.
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// Gives up the restore, removing what it staged even if it is resumable.
    pub fn discard(mut self) {
        self.discard = true;
    }

    /// Creates the manifest's directories in the staging directory (those
    /// there already, as directories, are kept).
    fn make_dirs(&self) -> Result<(), TreeError> {
        for e in &self.manifest.entries {
            if matches!(e.kind, EntryKind::Dir) {
                let dir = self.staging.join(&e.path);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                        let real_dir =
                            std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_dir());
                        if !real_dir {
                            return Err(TreeError::io(&dir)(err));
                        }
                    }
                    Err(err) => return Err(TreeError::io(&dir)(err)),
                }
            }
        }
        Ok(())
    }

    /// Empties the staging directory and begins again from nothing.
    fn start_afresh(&mut self) -> Result<(), TreeError> {
        let io = TreeError::io(&self.staging);
        match self.resume.as_mut() {
            Some(resume) => {
                resume._taken = staging::recreate(&self.staging, &resume.key).map_err(io)?;
                resume.durable = 0;
            }
            None => {
                staging::remove(&self.staging);
                staging::create(&self.staging).map_err(io)?;
            }
        }
        self.make_dirs()
    }

    /// How much of the first `durable` bytes of file data the staging directory
    /// still holds: up to the first file that is shorter than its share of
    /// them (or not a regular file).
    fn staged_whole(&self, durable: u64) -> Result<u64, TreeError> {
        let durable = durable.min(self.manifest.data_len()?);
        let mut offset = 0u64;
        for e in &self.manifest.entries {
            let EntryKind::File { size, .. } = &e.kind else {
                continue;
            };
            if offset >= durable {
                break;
            }
            let share = (*size).min(durable - offset);
            let held = std::fs::symlink_metadata(self.staging.join(&e.path))
                .ok()
                .filter(|m| m.file_type().is_file())
                .map_or(0, |m| m.len());
            if held < share {
                return Ok(offset + held);
            }
            offset += size;
        }
        Ok(durable)
    }

    /// Writes the files from `data`, which must yield the batch's file bytes
    /// from [`Restore::resume_from`] and end where they end, into the staging
    /// directory, checking each file's SHA-256 (a file staged already is read
    /// back for it). `seen` gets every chunk of file data in order, staged
    /// already or written now (for a progress bar, or a digest of the whole).
    ///
    /// A failure to verify discards what a resumable restore staged; any other
    /// failure (the transfer's, or local I/O) keeps it, checkpointed, for the
    /// next restore of the same content.
    pub async fn write_data(
        &mut self,
        data: impl AsyncRead + Unpin,
        mut seen: impl FnMut(&[u8]),
    ) -> Result<(), TreeError> {
        let result = self.write_files(data, &mut seen).await;
        if matches!(result, Err(TreeError::Integrity(_))) {
            self.discard = true;
        }
        result
    }

    /// [`Restore::write_data`]'s work.
    async fn write_files(
        &mut self,
        mut data: impl AsyncRead + Unpin,
        seen: &mut impl FnMut(&[u8]),
    ) -> Result<(), TreeError> {
        let from = self.resume_from();
        let Restore {
            staging,
            manifest,
            resume,
            ..
        } = self;
        // What is durable now is what is kept: a staged file found short of its
        // recorded share moved the resume point before the recorded one.
        if let Some(resume) = resume.as_mut() {
            resume.durable = resume.durable.min(from);
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        for e in &manifest.entries {
            let EntryKind::File { size, sha256 } = &e.kind else {
                continue;
            };
            let path = staging.join(&e.path);
            let kept = from.saturating_sub(offset).min(*size);
            let mut sha = sha2::Sha256::new();
            let file = if kept > 0 {
                let mut file = open_staged(&path, kept, kept < *size).await?;
                read_back(&mut file, kept, &path, &mut buf, &mut sha, seen).await?;
                file
            } else {
                create_staged(&path).await?
            };
            let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
            let mut done = kept;
            while done < *size {
                let want = (*size - done).min(buf.len() as u64) as usize;
                let n = match data.read(&mut buf[..want]).await {
                    Ok(0) => {
                        return Err(TreeError::Integrity(format!(
                            "the batch ended {} bytes before the end of {:?}",
                            *size - done,
                            e.path
                        )));
                    }
                    Ok(n) => n,
                    Err(err) => {
                        let err = read_error(err);
                        if !matches!(err, TreeError::Integrity(_))
                            && let Some(resume) = resume.as_mut()
                        {
                            // Best effort: the next restore resumes from here.
                            let _ = checkpoint(&mut out, staging, resume, offset + done).await;
                        }
                        return Err(err);
                    }
                };
                sha.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .await
                    .map_err(TreeError::io(&path))?;
                seen(&buf[..n]);
                done += n as u64;
                if let Some(resume) = resume.as_mut()
                    && (offset + done).saturating_sub(resume.durable) >= resume.checkpoint_every
                {
                    checkpoint(&mut out, staging, resume, offset + done).await?;
                }
            }
            if done > kept {
                out.flush().await.map_err(TreeError::io(&path))?;
                out.get_ref()
                    .sync_all()
                    .await
                    .map_err(TreeError::io(&path))?;
            }
            let got: [u8; 32] = sha.finalize().into();
            if got != *sha256 {
                return Err(TreeError::Integrity(if kept == *size {
                    format!(
                        "the staged copy of {:?} does not have the SHA-256 its manifest lists; \
                         it is fetched afresh when run again",
                        e.path
                    )
                } else {
                    format!("{:?} does not have the SHA-256 its manifest lists", e.path)
                }));
            }
            offset += size;
        }
        if data.read(&mut buf[..1]).await.map_err(read_error)? != 0 {
            return Err(TreeError::Integrity(
                "the batch holds more bytes than its files".into(),
            ));
        }
        Ok(())
    }

    /// Creates the links, gives every entry its mode and mtime, and moves the
    /// entries from the staging directory into place (directories merged, files
    /// renamed over what `force` allows replacing). Returns the number of
    /// entries restored.
    pub fn finish(mut self) -> Result<usize, TreeError> {
        let staged = |p: &str| self.staging.join(p);
        for e in &self.manifest.entries {
            let at = staged(&e.path);
            if matches!(
                e.kind,
                EntryKind::Symlink { .. } | EntryKind::Hardlink { .. }
            ) {
                // Made already if an earlier finish of this staging was cut off.
                let _ = std::fs::remove_file(&at);
            }
            match &e.kind {
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &at).map_err(TreeError::io(&at))?;
                }
                EntryKind::Hardlink { target } => {
                    std::fs::hard_link(staged(target), &at).map_err(TreeError::io(&at))?;
                }
                EntryKind::File { .. } => set_attributes(&at, e.mode, e.mtime)?,
                EntryKind::Dir => {}
            }
        }
        for e in &self.manifest.entries {
            let from = staged(&e.path);
            let to = self.root.join(&e.path);
            match &e.kind {
                EntryKind::Dir => match std::fs::symlink_metadata(&to) {
                    Ok(m) if m.file_type().is_dir() => {}
                    Ok(_) => {
                        return Err(TreeError::InTheWay {
                            path: to,
                            why: "appeared while the batch was fetched".into(),
                        });
                    }
                    Err(_) => std::fs::create_dir(&to).map_err(TreeError::io(&to))?,
                },
                _ => {
                    if !self.force && std::fs::symlink_metadata(&to).is_ok() {
                        return Err(TreeError::Exists(to));
                    }
                    std::fs::rename(&from, &to).map_err(TreeError::io(&to))?
                }
            }
        }
        // Directories last, deepest first: writing into one changes its mtime,
        // and a read-only one takes nothing more.
        for e in self.manifest.entries.iter().rev() {
            if matches!(e.kind, EntryKind::Dir) {
                set_attributes(&self.root.join(&e.path), e.mode, e.mtime)?;
            }
        }
        self.finished = true;
        staging::remove(&self.staging);
        Ok(self.manifest.entries.len())
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if !self.finished && (self.resume.is_none() || self.discard) {
            staging::remove(&self.staging);
        }
    }
}

/// Checks `manifest` against itself and against what `root` holds: see
/// [`Restore::new`].
fn check_target(
    root: &Path,
    manifest: &Manifest,
    options: RestoreOptions,
) -> Result<(), TreeError> {
    manifest.check(CheckOptions {
        case_insensitive: options.case_insensitive,
    })?;
    let root_meta = std::fs::metadata(root).map_err(TreeError::io(root))?;
    if !root_meta.is_dir() {
        return Err(TreeError::InTheWay {
            path: root.to_path_buf(),
            why: "not a directory".into(),
        });
    }
    for e in &manifest.entries {
        let at = root.join(&e.path);
        let held = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(TreeError::io(at)(err)),
        };
        let is_dir = held.file_type().is_dir();
        match (&e.kind, is_dir) {
            (EntryKind::Dir, true) => {}
            (EntryKind::Dir, false) => {
                return Err(TreeError::InTheWay {
                    path: at,
                    why: if held.file_type().is_symlink() {
                        "is a symbolic link where a directory goes; it is never followed".into()
                    } else {
                        "is a file where a directory goes".into()
                    },
                });
            }
            (_, true) => {
                return Err(TreeError::InTheWay {
                    path: at,
                    why: "is a directory where a file goes".into(),
                });
            }
            (_, false) if options.force => {}
            (_, false) => return Err(TreeError::Exists(at)),
        }
    }
    Ok(())
}

/// A new file at `path` in the staging directory: whatever was there (a file
/// from an earlier attempt, or a link, which is never followed) removed first.
async fn create_staged(path: &Path) -> Result<tokio::fs::File, TreeError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(TreeError::io(path)(e)),
    }
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(TreeError::io(path))
}

/// A staged file whose first `kept` bytes are staged already, never opened
/// through a link: to read, and with `more` to write the rest after them too
/// (cut to them first). One staged whole is only read: an earlier finish may
/// have given it its mode already, read-only perhaps.
async fn open_staged(path: &Path, kept: u64, more: bool) -> Result<tokio::fs::File, TreeError> {
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(more)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .await
        .map_err(TreeError::io(path))?;
    if more {
        file.set_len(kept).await.map_err(TreeError::io(path))?;
    }
    Ok(file)
}

/// Reads the `kept` staged bytes of `file` from its start into `sha` and
/// `seen`, leaving it positioned after them.
async fn read_back(
    file: &mut tokio::fs::File,
    kept: u64,
    path: &Path,
    buf: &mut [u8],
    sha: &mut sha2::Sha256,
    seen: &mut impl FnMut(&[u8]),
) -> Result<(), TreeError> {
    let mut left = kept;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = file
            .read(&mut buf[..want])
            .await
            .map_err(TreeError::io(path))?;
        if n == 0 {
            return Err(TreeError::Io {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "the staged file shrank"),
            });
        }
        sha.update(&buf[..n]);
        seen(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// Syncs what `out` holds and records that the first `durable` bytes of file
/// data are staged.
async fn checkpoint(
    out: &mut tokio::io::BufWriter<tokio::fs::File>,
    staging: &Path,
    resume: &mut Resumable,
    durable: u64,
) -> Result<(), TreeError> {
    let io = TreeError::io(staging);
    out.flush().await.map_err(TreeError::io(staging))?;
    out.get_ref()
        .sync_data()
        .await
        .map_err(TreeError::io(staging))?;
    staging::checkpoint(staging, &resume.key, durable).map_err(io)?;
    resume.durable = durable;
    Ok(())
}

/// The permission bits (`0o777` of `mode`: never set-id bits from a peer) and
/// mtime of a file or directory.
fn set_attributes(path: &Path, mode: u32, mtime: super::Timestamp) -> Result<(), TreeError> {
    let io = TreeError::io(path);
    let file = std::fs::File::open(path).map_err(TreeError::io(path))?;
    file.set_modified(mtime.to_system_time())
        .map_err(TreeError::io(path))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
        .map_err(io)
}

/// A read of the batch that failed: verification (`InvalidData`), or the
/// transfer.
fn read_error(e: io::Error) -> TreeError {
    if e.kind() == io::ErrorKind::InvalidData {
        TreeError::Integrity(e.to_string())
    } else {
        TreeError::Transfer(crate::Error::Io(e))
    }
}
