//! The sending side of a tree: walking the inputs into a plan, and reading the
//! plan as a batch (each file once, hashed as it streams, then the manifest).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;

use super::TreeError;
use super::check::{check_link_target, check_path};
use super::manifest::{Entry, EntryKind, MAX_ENTRIES, Manifest, Timestamp};

/// An input that is left out of the tree, and why (a link that leads out of it,
/// a socket or device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The input.
    pub path: PathBuf,
    /// Why it was left out.
    pub why: String,
}

/// What a tree batch will hold, walked from local paths: each entry with the file
/// it comes from and what that file was when it was walked.
#[derive(Clone, Debug)]
pub struct Packing {
    planned: Vec<Planned>,
    skipped: Vec<Skipped>,
    data_len: u64,
}

#[derive(Clone, Debug)]
struct Planned {
    entry: Entry,
    source: PathBuf,
    /// For a file: what it was when walked, to notice a change while it is read.
    state: Option<FileState>,
}

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileState {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    inode: (u64, u64),
}

impl FileState {
    fn of(m: &std::fs::Metadata) -> Self {
        FileState {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            inode: (m.dev(), m.ino()),
        }
    }
}

impl Packing {
    /// Walks `inputs` into a plan. Each input is an entry at the top of the tree,
    /// named by its last component; a directory needs `recursive`, and then
    /// brings everything under it, in name order. Symbolic links are kept as
    /// links (never followed); one that leads out of what is sent is skipped
    /// (see [`Packing::skipped`]), as are sockets, pipes and devices. A file
    /// seen again under another name becomes a hard link to the first.
    pub fn plan(inputs: &[PathBuf], recursive: bool) -> Result<Self, TreeError> {
        let mut walk = Walk {
            planned: Vec::new(),
            skipped: Vec::new(),
            inodes: HashMap::new(),
            data_len: 0,
            recursive,
        };
        let mut names = HashSet::new();
        for input in inputs {
            let name = top_name(input)?;
            if !names.insert(name.clone()) {
                return Err(TreeError::BadInput {
                    path: input.clone(),
                    why: format!("another input is also named {name:?}"),
                });
            }
            walk.visit(input, name, true)?;
        }
        let mut packing = Packing {
            planned: walk.planned,
            skipped: walk.skipped,
            data_len: walk.data_len,
        };
        packing.drop_links_leading_out();
        Ok(packing)
    }

    /// What was left out, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The entries, as the manifest will list them (files' digests not known yet).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.planned.iter().map(|p| &p.entry)
    }

    /// Bytes of file data: the batch is this, plus the manifest and trailer.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Bytes of the whole batch: the files' bytes, the manifest and the trailer
    /// (a digest takes the same room whatever its value, so this is exact
    /// before any file is read).
    pub fn batch_len(&self) -> Result<u64, TreeError> {
        let manifest = Manifest {
            entries: self.entries().cloned().collect(),
        };
        Ok(self.data_len + manifest.encode_tail()?.len() as u64)
    }

    /// The number of regular files (hard links not counted).
    pub fn file_count(&self) -> usize {
        self.planned
            .iter()
            .filter(|p| matches!(p.entry.kind, EntryKind::File { .. }))
            .count()
    }

    /// The tree as a batch's bytes: every file, read once and hashed as it
    /// streams, then the manifest and trailer. A file that changed since the
    /// walk (or while it was read) ends the reader in an error, so a changed
    /// tree is never completed as if it were the one walked. Each call reads the
    /// files afresh.
    pub fn reader(&self) -> TreeReader {
        let (tx, rx) = mpsc::channel(4);
        let planned = self.planned.clone();
        tokio::spawn(async move {
            if let Err(e) = produce(planned, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        TreeReader {
            rx,
            current: Bytes::new(),
        }
    }

    /// Links that the manifest check would refuse (they lead out of the tree, or
    /// through another link) are skipped here, so the sender does not send what
    /// every retriever refuses. Leaving a link out only relaxes the check for
    /// the others, so one pass finds them all.
    fn drop_links_leading_out(&mut self) {
        let symlinks: HashSet<String> = self
            .planned
            .iter()
            .filter(|p| matches!(p.entry.kind, EntryKind::Symlink { .. }))
            .map(|p| p.entry.path.clone())
            .collect();
        let symlinks: HashSet<&str> = symlinks.iter().map(String::as_str).collect();
        let mut skipped = Vec::new();
        self.planned.retain(|p| {
            let EntryKind::Symlink { target } = &p.entry.kind else {
                return true;
            };
            let components: Vec<&str> = p.entry.path.split('/').collect();
            match check_link_target(&components, target, &symlinks) {
                Ok(()) => true,
                Err(why) => {
                    skipped.push(Skipped {
                        path: p.source.clone(),
                        why,
                    });
                    false
                }
            }
        });
        self.skipped.extend(skipped);
    }
}

/// The name an input takes at the top of the tree: its last component.
fn top_name(input: &Path) -> Result<String, TreeError> {
    let bad = |why: &str| TreeError::BadInput {
        path: input.to_path_buf(),
        why: why.into(),
    };
    let name = match input.file_name() {
        Some(name) => name.to_os_string(),
        // ".", "..", "dir/..": the directory's own name.
        None => std::fs::canonicalize(input)
            .map_err(TreeError::io(input))?
            .file_name()
            .ok_or_else(|| bad("has no name to send it under"))?
            .to_os_string(),
    };
    let name = name
        .into_string()
        .map_err(|_| bad("its name is not UTF-8"))?;
    check_path(&name).map_err(|e| bad(&e.to_string()))?;
    Ok(name)
}

struct Walk {
    planned: Vec<Planned>,
    skipped: Vec<Skipped>,
    /// (device, inode) of files with several links, and the first path seen.
    inodes: HashMap<(u64, u64), String>,
    data_len: u64,
    recursive: bool,
}

impl Walk {
    fn visit(&mut self, source: &Path, path: String, top: bool) -> Result<(), TreeError> {
        if self.planned.len() >= MAX_ENTRIES {
            return Err(TreeError::BadInput {
                path: source.to_path_buf(),
                why: format!("a tree holds at most {MAX_ENTRIES} entries"),
            });
        }
        let meta = std::fs::symlink_metadata(source).map_err(TreeError::io(source))?;
        let mtime = meta.modified().map(Timestamp::of).unwrap_or_default();
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        let entry = |kind| Entry {
            path: path.clone(),
            mode,
            mtime,
            kind,
        };
        if ft.is_symlink() {
            let target = std::fs::read_link(source).map_err(TreeError::io(source))?;
            match target.into_os_string().into_string() {
                Ok(target) => self.planned.push(Planned {
                    entry: entry(EntryKind::Symlink { target }),
                    source: source.to_path_buf(),
                    state: None,
                }),
                Err(_) => self.skip(source, "a symbolic link whose target is not UTF-8"),
            }
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = self.inodes.get(&key) {
                    let target = first.clone();
                    self.planned.push(Planned {
                        entry: entry(EntryKind::Hardlink { target }),
                        source: source.to_path_buf(),
                        state: None,
                    });
                    return Ok(());
                }
                self.inodes.insert(key, path.clone());
            }
            self.data_len = self.data_len.saturating_add(meta.len());
            self.planned.push(Planned {
                entry: entry(EntryKind::File {
                    size: meta.len(),
                    sha256: [0; 32],
                }),
                source: source.to_path_buf(),
                state: Some(FileState::of(&meta)),
            });
        } else if ft.is_dir() {
            if !self.recursive {
                return Err(TreeError::BadInput {
                    path: source.to_path_buf(),
                    why: "is a directory (-r sends it with everything in it)".into(),
                });
            }
            self.planned.push(Planned {
                entry: entry(EntryKind::Dir),
                source: source.to_path_buf(),
                state: None,
            });
            let mut children: Vec<(String, PathBuf)> = Vec::new();
            for child in std::fs::read_dir(source).map_err(TreeError::io(source))? {
                let child = child.map_err(TreeError::io(source))?;
                match child.file_name().into_string() {
                    Ok(name) => children.push((name, child.path())),
                    Err(_) => self.skip(&child.path(), "its name is not UTF-8"),
                }
            }
            children.sort();
            for (name, child) in children {
                let child_path = format!("{path}/{name}");
                if let Err(e) = check_path(&child_path) {
                    self.skip(&child, &e.to_string());
                    continue;
                }
                self.visit(&child, child_path, false)?;
            }
        } else if top {
            return Err(TreeError::BadInput {
                path: source.to_path_buf(),
                why: "not a regular file, directory or link".into(),
            });
        } else {
            self.skip(source, "not a regular file, directory or link");
        }
        Ok(())
    }

    fn skip(&mut self, path: &Path, why: &str) {
        self.skipped.push(Skipped {
            path: path.to_path_buf(),
            why: why.into(),
        });
    }
}

/// Reads every planned file into `tx`, then the manifest with the digests found.
async fn produce(
    mut planned: Vec<Planned>,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    let changed = |path: &Path| io::Error::other(TreeError::Changed(path.to_path_buf()));
    for p in &mut planned {
        let (EntryKind::File { size, sha256 }, Some(state)) = (&mut p.entry.kind, p.state) else {
            continue;
        };
        let mut file = tokio::fs::File::open(&p.source).await?;
        if FileState::of(&file.metadata().await?) != state {
            return Err(changed(&p.source));
        }
        let mut sha = sha2::Sha256::new();
        let mut left = *size;
        while left > 0 {
            let mut buf = vec![0u8; left.min(1 << 20) as usize];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Err(changed(&p.source));
            }
            buf.truncate(n);
            sha.update(&buf);
            left -= n as u64;
            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                return Ok(()); // the reader was dropped
            }
        }
        if FileState::of(&file.metadata().await?) != state {
            return Err(changed(&p.source));
        }
        *sha256 = sha.finalize().into();
    }
    let manifest = Manifest {
        entries: planned.into_iter().map(|p| p.entry).collect(),
    };
    let tail = manifest.encode_tail().map_err(io::Error::other)?;
    let _ = tx.send(Ok(Bytes::from(tail))).await;
    Ok(())
}

/// A tree as the bytes of its batch; see [`Packing::reader`].
#[derive(Debug)]
pub struct TreeReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl AsyncRead for TreeReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                buf.put_slice(&self.current[..n]);
                self.current.advance(n);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.current = chunk,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
