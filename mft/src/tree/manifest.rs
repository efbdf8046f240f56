//! The manifest of a tree batch: what each entry is, where its bytes lie, and the
//! encoding at the end of the batch that holds it.

use bytes::Bytes;

use super::TreeError;
use crate::wire::{Codec, DecodeError, EncodeError, Reader, Writer};

/// The last bytes of every tree batch: `manifest_len u64` · `version u8` · this.
pub const MAGIC: [u8; 8] = *b"mftqtree";

/// The version of the tree format this code writes and reads.
pub const TREE_VERSION: u8 = 1;

/// Bytes of the trailer after the manifest.
pub const TRAILER_LEN: u64 = 8 + 1 + 8;

/// The most entries a manifest may hold.
pub const MAX_ENTRIES: usize = 1_000_000;

/// The most bytes an encoded manifest may take.
pub const MAX_MANIFEST_BYTES: u64 = 128 << 20;

/// The longest path (or link target) in a manifest, in bytes.
pub const MAX_PATH: usize = 4096;

/// A moment, as seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timestamp {
    /// Whole seconds (negative before 1970).
    pub secs: i64,
    /// Nanoseconds, below 1,000,000,000.
    pub nanos: u32,
}

impl Timestamp {
    /// The moment of `time`; one before the epoch counts backwards.
    pub fn of(time: std::time::SystemTime) -> Self {
        match time.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(before) => {
                let d = before.duration();
                let (secs, nanos) = match d.subsec_nanos() {
                    0 => (d.as_secs(), 0),
                    n => (d.as_secs() + 1, 1_000_000_000 - n),
                };
                Timestamp {
                    secs: -i64::try_from(secs).unwrap_or(i64::MAX),
                    nanos,
                }
            }
        }
    }

    /// The moment as a `SystemTime`.
    pub fn to_system_time(self) -> std::time::SystemTime {
        let nanos = std::time::Duration::from_nanos(u64::from(self.nanos));
        let secs = std::time::Duration::from_secs(self.secs.unsigned_abs());
        if self.secs >= 0 {
            std::time::UNIX_EPOCH + secs + nanos
        } else {
            std::time::UNIX_EPOCH - secs + nanos
        }
    }
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file, whose bytes follow those of the files before it.
    File {
        /// Its length in bytes.
        size: u64,
        /// The SHA-256 of its bytes.
        sha256: [u8; 32],
    },
    /// A directory.
    Dir,
    /// A symbolic link (relative, and never leading out of the tree).
    Symlink {
        /// What it points to, relative to its directory.
        target: String,
    },
    /// Another name for a file listed before it.
    Hardlink {
        /// The path of that file.
        target: String,
    },
}

/// One file, directory or link of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its path in the tree: components joined by `/`, never absolute, never
    /// with `.` or `..`, and its parent listed before it as a directory.
    pub path: String,
    /// Its permission bits (at most `0o7777`; restoring keeps `0o777` of them).
    pub mode: u32,
    /// When it was last modified.
    pub mtime: Timestamp,
    /// What it is.
    pub kind: EntryKind,
}

impl Entry {
    /// The bytes it holds in the batch: a file's size, and nothing for others.
    pub fn data_len(&self) -> u64 {
        match self.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        }
    }
}

/// The entries of a tree batch, in the order their bytes lie in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Parents before children; files' bytes in this order.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Bytes of file data before the manifest: the sum of the files' sizes.
    pub fn data_len(&self) -> Result<u64, TreeError> {
        self.entries.iter().try_fold(0u64, |sum, e| {
            sum.checked_add(e.data_len())
                .ok_or_else(|| TreeError::Invalid("the files' sizes overflow".into()))
        })
    }

    /// Where each entry's bytes start in the batch (a running sum of sizes).
    pub fn offsets(&self) -> Vec<u64> {
        let mut at = 0u64;
        self.entries
            .iter()
            .map(|e| {
                let start = at;
                at = at.saturating_add(e.data_len());
                start
            })
            .collect()
    }

    /// The entry at `path`, and where its bytes start.
    pub fn find(&self, path: &str) -> Option<(&Entry, u64)> {
        let offsets = self.offsets();
        self.entries
            .iter()
            .zip(offsets)
            .find(|(e, _)| e.path == path)
    }

    /// The manifest followed by the trailer: what ends a tree batch.
    pub fn encode_tail(&self) -> Result<Vec<u8>, TreeError> {
        let mut tail = self
            .to_bytes()
            .map_err(|e| TreeError::Invalid(e.to_string()))?;
        let len = tail.len() as u64;
        tail.extend_from_slice(&len.to_be_bytes());
        tail.push(TREE_VERSION);
        tail.extend_from_slice(&MAGIC);
        Ok(tail)
    }

    /// From the batch's last [`TRAILER_LEN`] bytes: the manifest's length, after
    /// checking the magic and version.
    pub fn manifest_len(trailer: &[u8]) -> Result<u64, TreeError> {
        let not_tree = || TreeError::Invalid("the batch does not end in a tree trailer".into());
        if trailer.len() as u64 != TRAILER_LEN || trailer[9..] != MAGIC {
            return Err(not_tree());
        }
        if trailer[8] != TREE_VERSION {
            return Err(TreeError::Invalid(format!(
                "tree format version {} (this mftq reads {TREE_VERSION})",
                trailer[8]
            )));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&trailer[..8]);
        let len = u64::from_be_bytes(len);
        if len > MAX_MANIFEST_BYTES {
            return Err(TreeError::Invalid(format!(
                "a manifest of {len} bytes exceeds the limit of {MAX_MANIFEST_BYTES}"
            )));
        }
        Ok(len)
    }

    /// Decodes a manifest (bounded: every count and length is checked before
    /// anything is allocated). It still needs [`Manifest::check`].
    pub fn decode(bytes: Bytes) -> Result<Self, TreeError> {
        Manifest::from_bytes(bytes).map_err(|e| TreeError::Invalid(format!("the manifest: {e}")))
    }
}

const KIND_FILE: u8 = 0;
const KIND_DIR: u8 = 1;
const KIND_SYMLINK: u8 = 2;
const KIND_HARDLINK: u8 = 3;

impl Codec for Manifest {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        crate::wire::codec::check_len("manifest", self.entries.len(), MAX_ENTRIES)?;
        w.u32(self.entries.len() as u32);
        for e in &self.entries {
            w.bytes16("path", e.path.as_bytes(), MAX_PATH)?
                .u32(e.mode)
                .u64(e.mtime.secs as u64)
                .u32(e.mtime.nanos);
            match &e.kind {
                EntryKind::File { size, sha256 } => {
                    w.u8(KIND_FILE).u64(*size).put(sha256);
                }
                EntryKind::Dir => {
                    w.u8(KIND_DIR);
                }
                EntryKind::Symlink { target } => {
                    w.u8(KIND_SYMLINK)
                        .bytes16("link target", target.as_bytes(), MAX_PATH)?;
                }
                EntryKind::Hardlink { target } => {
                    w.u8(KIND_HARDLINK)
                        .bytes16("link target", target.as_bytes(), MAX_PATH)?;
                }
            }
        }
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32("entry count")? as usize;
        if n > MAX_ENTRIES {
            return Err(DecodeError::TooLong {
                field: "manifest",
                len: n,
                max: MAX_ENTRIES,
            });
        }
        let text = |r: &mut Reader, field| {
            let bytes = r.bytes16(field, MAX_PATH)?;
            String::from_utf8(bytes.to_vec())
                .map_err(|_| DecodeError::Invalid("a path is not UTF-8"))
        };
        // Each entry takes at least 19 bytes: a count cannot make us allocate
        // more than the bytes that are there.
        let mut entries = Vec::with_capacity(n.min(r.remaining() / 19));
        for _ in 0..n {
            let path = text(r, "path")?;
            let mode = r.u32("mode")?;
            let secs = r.u64("mtime")? as i64;
            let nanos = r.u32("mtime nanoseconds")?;
            let kind = match r.u8("entry kind")? {
                KIND_FILE => EntryKind::File {
                    size: r.u64("file size")?,
                    sha256: r.array("file SHA-256")?,
                },
                KIND_DIR => EntryKind::Dir,
                KIND_SYMLINK => EntryKind::Symlink {
                    target: text(r, "link target")?,
                },
                KIND_HARDLINK => EntryKind::Hardlink {
                    target: text(r, "link target")?,
                },
                _ => return Err(DecodeError::Invalid("entry kind")),
            };
            entries.push(Entry {
                path,
                mode,
                mtime: Timestamp { secs, nanos },
                kind,
            });
        }
        Ok(Manifest { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            mode: 0o644,
            mtime: Timestamp {
                secs: 1_700_000_000,
                nanos: 5,
            },
            kind,
        }
    }

    #[test]
    fn a_tail_round_trips_and_offsets_follow_the_files() {
        let manifest = Manifest {
            entries: vec![
                entry("d", EntryKind::Dir),
                entry(
                    "d/a",
                    EntryKind::File {
                        size: 10,
                        sha256: [1; 32],
                    },
                ),
                entry("d/l", EntryKind::Symlink { target: "a".into() }),
                entry(
                    "d/b",
                    EntryKind::File {
                        size: 7,
                        sha256: [2; 32],
                    },
                ),
                entry(
                    "d/h",
                    EntryKind::Hardlink {
                        target: "d/a".into(),
                    },
                ),
            ],
        };
        assert_eq!(manifest.data_len().ok(), Some(17));
        assert_eq!(manifest.offsets(), vec![0, 0, 10, 10, 17]);
        assert_eq!(manifest.find("d/b").map(|(_, at)| at), Some(10));
        let tail = manifest.encode_tail().expect("encodes");
        let trailer = &tail[tail.len() - TRAILER_LEN as usize..];
        let len = Manifest::manifest_len(trailer).expect("a trailer");
        assert_eq!(len as usize, tail.len() - TRAILER_LEN as usize);
        let back = Manifest::decode(Bytes::copy_from_slice(&tail[..len as usize]));
        assert_eq!(back.ok(), Some(manifest));
    }

    #[test]
    fn trailers_of_other_things_are_refused() {
        let mut trailer = Manifest::default().encode_tail().expect("encodes");
        assert!(Manifest::manifest_len(&trailer[trailer.len() - 17..]).is_ok());
        let n = trailer.len();
        trailer[n - 9] = 2;
        let err = Manifest::manifest_len(&trailer[n - 17..]).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        assert!(Manifest::manifest_len(b"not a tree at all").is_err());
        let mut huge = (MAX_MANIFEST_BYTES + 1).to_be_bytes().to_vec();
        huge.push(TREE_VERSION);
        huge.extend_from_slice(&MAGIC);
        assert!(Manifest::manifest_len(&huge).is_err());
    }

    #[test]
    fn timestamps_survive_before_and_after_the_epoch() {
        for (secs, nanos) in [
            (0, 0),
            (1_700_000_000, 123),
            (-1, 999_999_999),
            (-86_400, 0),
        ] {
            let t = Timestamp { secs, nanos };
            assert_eq!(Timestamp::of(t.to_system_time()), t);
        }
    }

    proptest! {
        /// Whatever the bytes, decoding ends in a manifest or an error: never a
        /// panic, never an allocation beyond the input.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::decode(Bytes::from(bytes));
        }
    }
}
