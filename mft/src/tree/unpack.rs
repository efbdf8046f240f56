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
/// Dropped before [`Restore::finish`], it removes what it staged.
#[derive(Debug)]
pub struct Restore {
    root: PathBuf,
    staging: PathBuf,
    manifest: Manifest,
    force: bool,
    finished: bool,
}

/// The name of a staging directory: hidden, and ours.
const STAGING_PREFIX: &str = ".mftq-tree-";

impl Restore {
    /// Prepares restoring `manifest` into the directory `root` (which must
    /// exist). Refuses, before anything is written: a manifest that fails
    /// [`Manifest::check`]; an entry whose path in `root` passes through a
    /// symbolic link or a non-directory; and an entry whose path exists already
    /// (a directory may, if the entry is one too), unless `force` allows
    /// replacing it.
    pub fn new(
        root: &Path,
        manifest: Manifest,
        options: RestoreOptions,
    ) -> Result<Self, TreeError> {
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
        let mut suffix = [0u8; 6];
        crate::crypto::fill_random(&mut suffix);
        let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let staging = root.join(format!("{STAGING_PREFIX}{name}.part"));
        std::fs::create_dir(&staging).map_err(TreeError::io(&staging))?;
        let _ = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700));
        let restore = Restore {
            root: root.to_path_buf(),
            staging,
            manifest,
            force: options.force,
            finished: false,
        };
        for e in &restore.manifest.entries {
            if matches!(e.kind, EntryKind::Dir) {
                let dir = restore.staging.join(&e.path);
                std::fs::create_dir(&dir).map_err(TreeError::io(&dir))?;
            }
        }
        Ok(restore)
    }

    /// The manifest being restored.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Writes the files from `data`, which must yield the batch's file bytes from
    /// its start and end there, into the staging directory, checking each
    /// file's SHA-256. `seen` gets every chunk as it is written (for a progress
    /// bar, or a digest of the whole).
    pub async fn write_data(
        &mut self,
        mut data: impl AsyncRead + Unpin,
        mut seen: impl FnMut(&[u8]),
    ) -> Result<(), TreeError> {
        let mut buf = vec![0u8; 1 << 20];
        for e in &self.manifest.entries {
            let EntryKind::File { size, sha256 } = &e.kind else {
                continue;
            };
            let path = self.staging.join(&e.path);
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
                .map_err(TreeError::io(&path))?;
            let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
            let mut sha = sha2::Sha256::new();
            let mut left = *size;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = data.read(&mut buf[..want]).await.map_err(read_error)?;
                if n == 0 {
                    return Err(TreeError::Integrity(format!(
                        "the batch ended {left} bytes before the end of {:?}",
                        e.path
                    )));
                }
                sha.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .await
                    .map_err(TreeError::io(&path))?;
                seen(&buf[..n]);
                left -= n as u64;
            }
            out.flush().await.map_err(TreeError::io(&path))?;
            out.get_ref()
                .sync_all()
                .await
                .map_err(TreeError::io(&path))?;
            let got: [u8; 32] = sha.finalize().into();
            if got != *sha256 {
                return Err(TreeError::Integrity(format!(
                    "{:?} does not have the SHA-256 its manifest lists",
                    e.path
                )));
            }
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
        remove_staging(&self.staging);
        Ok(self.manifest.entries.len())
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if !self.finished {
            remove_staging(&self.staging);
        }
    }
}

/// Removes a staging directory and what is left in it (never following links:
/// `remove_dir_all` removes a link, not what it points to).
fn remove_staging(staging: &Path) {
    let _ = std::fs::remove_dir_all(staging);
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
