//! Several files and directories in one batch.
//!
//! A **tree batch** is the bytes of its files, one after another in manifest
//! order, then its [`Manifest`] (each entry's path, kind, mode, mtime, and for a
//! file its size and SHA-256), then a 17-byte trailer naming the manifest's
//! length. The manifest comes last so that a sender reads each file once,
//! hashing it as it streams; a retriever reads the end first (a byte range), and
//! then the files' bytes, or just one file's. The whole batch is sealed,
//! chained and signed like any other: the tree is a layout of its plaintext,
//! not a change to the protocol.
//!
//! A manifest from a peer is hostile input. [`Manifest::check`] refuses
//! absolute paths, `.` and `..`, empty components, control characters,
//! duplicates (and, on request, names that collide when case is ignored),
//! parents that are not directories listed first, and links that lead out of
//! the tree. [`Restore`] writes into a staging directory inside the target,
//! never follows a link that is there already, checks every file's SHA-256,
//! and only then moves the entries into place. [`fetch`] stages by the batch's
//! content, so a fetch that was cut off is resumed by the next one of the same
//! content, which fetches only what was not staged yet ([`staged`] says what a
//! failed fetch kept).
//!
//! ```no_run
//! # async fn demo(sender: mft::Sender, retriever: mft::Retriever) -> Result<(), mft::tree::TreeError> {
//! use std::path::PathBuf;
//! use mft::tree::{Packing, RestoreOptions};
//!
//! // Send a directory and a file as one batch.
//! let packing = Packing::plan(&[PathBuf::from("reports"), PathBuf::from("notes.txt")], true)?;
//! sender.send(packing.reader(), b"monday", b"{}").await?;
//!
//! // Restore it into ./restored (which must exist).
//! let request = mft::Pull::batch(b"monday");
//! let fetched = mft::tree::fetch(&retriever, &request, None, "restored".as_ref(), RestoreOptions::default(), None, |_| {}).await?;
//! println!("{} entries restored", fetched.entries);
//! # Ok(()) }
//! ```

mod check;
mod fetch;
mod manifest;
mod pack;
mod staging;
mod unpack;

pub use check::CheckOptions;
pub use fetch::{Fetched, fetch, fetch_file, fetch_manifest};
pub use manifest::{
    Entry, EntryKind, MAGIC, MAX_ENTRIES, MAX_MANIFEST_BYTES, MAX_PATH, Manifest, TRAILER_LEN,
    TREE_VERSION, Timestamp,
};
pub use pack::{Packing, Skipped, TreeReader};
pub use staging::{ResumeKey, staged};
pub use unpack::{Restore, RestoreOptions};

use std::path::PathBuf;

/// Why a tree could not be sent or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// The manifest could write outside the target, or is not well formed
    /// enough to restore safely: nothing was written.
    #[error("refused a hostile manifest: {0}")]
    Hostile(String),
    /// The batch is not a tree, or its manifest does not decode.
    #[error("not a valid tree batch: {0}")]
    Invalid(String),
    /// Data failed verification (a file's SHA-256).
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// Something is in the way in the target, and replacing was not asked for.
    #[error("{}: exists; --force replaces it", .0.display())]
    Exists(PathBuf),
    /// Something in the target is in the way and is never replaced (a link on
    /// the way to an entry, a directory where a file goes).
    #[error("{}: {why}", path.display())]
    InTheWay {
        /// Where.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// An input cannot be sent as part of a tree.
    #[error("{}: {why}", path.display())]
    BadInput {
        /// The input.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// An input changed while it was read.
    #[error("{} changed while it was sent", .0.display())]
    Changed(PathBuf),
    /// Reading or writing local files failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The transfer failed.
    #[error(transparent)]
    Transfer(#[from] crate::Error),
}

impl TreeError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TreeError {
        let path = path.into();
        move |source| TreeError::Io { path, source }
    }
}
