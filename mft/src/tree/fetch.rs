//! Retrieving a tree batch: its manifest from its end, then all of its files'
//! bytes, or one file's, each a byte range of the batch. Every range must come
//! from the same content (the same chain hash), so a batch replaced between two
//! ranges is noticed, never mixed.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use sha2::Digest;
use tokio::io::AsyncReadExt;

use super::TreeError;
use super::manifest::{EntryKind, Manifest, TRAILER_LEN};
use super::staging::ResumeKey;
use super::unpack::{Restore, RestoreOptions};
use crate::client::{Pull, Retriever};
use crate::stream::{BatchInfo, BatchReader};

/// How much of a batch's end is read at first: most manifests fit, so the
/// manifest usually takes one range.
const TAIL_GUESS: u64 = 1 << 20;

/// What a fetch restored.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The batch, as its first range described it.
    pub info: BatchInfo,
    /// Entries restored.
    pub entries: usize,
    /// Bytes of file data fetched (not counting those resumed from).
    pub bytes: u64,
    /// Bytes of file data that an earlier, interrupted fetch had staged, and
    /// this one kept (verified again, not fetched).
    pub resumed_from: u64,
    /// The SHA-256 of the whole batch (its files' bytes, manifest and trailer)
    /// when all of it was fetched, to compare with a digest the sender declared.
    pub sha256: Option<[u8; 32]>,
}

/// Fetches the manifest of the tree batch `request` names: the manifest, the
/// batch's description, and the bytes of the batch's end (manifest and
/// trailer). `size` is the batch's size if known (from a listing or an earlier
/// pull), which saves a round trip. The manifest is decoded (bounded) but not
/// yet [checked](Manifest::check).
pub async fn fetch_manifest(
    retriever: &Retriever,
    request: &Pull,
    size: Option<u64>,
) -> Result<(Manifest, BatchInfo, Bytes), TreeError> {
    let size = match size {
        Some(size) => size,
        None => probe(retriever, request).await?,
    };
    if size < TRAILER_LEN {
        return Err(TreeError::Invalid(format!(
            "a batch of {size} bytes is too short to be a tree"
        )));
    }
    let start = size.saturating_sub(TAIL_GUESS);
    let (mut tail, info) = read_range(retriever, request, start, size, None).await?;
    let trailer = tail.split_off(tail.len() - TRAILER_LEN as usize);
    let manifest_len = Manifest::manifest_len(&trailer)?;
    if manifest_len + TRAILER_LEN > size {
        return Err(TreeError::Invalid(format!(
            "its trailer names a manifest of {manifest_len} bytes in a batch of {size}"
        )));
    }
    let manifest_start = size - TRAILER_LEN - manifest_len;
    if manifest_start < start {
        let (mut before, _) =
            read_range(retriever, request, manifest_start, start, Some(&info)).await?;
        before.extend_from_slice(&tail);
        tail = before;
    } else {
        let _ = tail.split_to((manifest_start - start) as usize);
    }
    let manifest = Manifest::decode(tail.clone().freeze())?;
    let data_len = manifest.data_len()?;
    if data_len != manifest_start {
        return Err(TreeError::Invalid(format!(
            "its files add up to {data_len} bytes, but its manifest starts at byte {manifest_start}"
        )));
    }
    tail.extend_from_slice(&trailer);
    Ok((manifest, info, tail.freeze()))
}

/// Fetches a whole tree batch into the directory `root` (which must exist),
/// as [`Restore::resumable`] does it: the manifest checked before anything is
/// written, every file's SHA-256 checked, entries moved into place at the end.
/// A fetch of the same content that was cut off (by the network, a signal, a
/// full disk) left its staged files in `root`: this one verifies them again and
/// fetches only the rest ([`Fetched::resumed_from`]). Find what a failed fetch
/// kept with [`staged`](super::staged).
///
/// `size` is the batch's size if known (see [`fetch_manifest`]); `sha256` is
/// the digest of the whole batch that its sender declared (in its metadata),
/// if any: a batch that does not match it is an
/// [`Integrity`](TreeError::Integrity) failure, and nothing is moved into place
/// (nor kept). `progress` gets the bytes of file data staged so far.
pub async fn fetch(
    retriever: &Retriever,
    request: &Pull,
    size: Option<u64>,
    root: &Path,
    options: RestoreOptions,
    sha256: Option<[u8; 32]>,
    mut progress: impl FnMut(u64),
) -> Result<Fetched, TreeError> {
    let (manifest, info, tail) = fetch_manifest(retriever, request, size).await?;
    let data_len = manifest.data_len()?;
    let mut restore = Restore::resumable(root, manifest, options, ResumeKey::from(&info))?;
    let from = restore.resume_from();
    let mut sha = sha2::Sha256::new();
    let mut written = 0u64;
    let seen = |bytes: &[u8]| {
        sha.update(bytes);
        written += bytes.len() as u64;
        progress(written);
    };
    if from < data_len {
        let (reader, _) = open_range(retriever, request, from, data_len, Some(&info)).await?;
        restore.write_data(reader, seen).await?;
    } else {
        restore.write_data(&[][..], seen).await?;
    }
    sha.update(&tail);
    let digest: [u8; 32] = sha.finalize().into();
    if let Some(declared) = sha256
        && declared != digest
    {
        restore.discard();
        return Err(TreeError::Integrity(format!(
            "the batch's SHA-256 is {}, but its sender declared {}",
            crate::wire::values::hex(&digest),
            crate::wire::values::hex(&declared)
        )));
    }
    let entries = restore.finish()?;
    Ok(Fetched {
        info,
        entries,
        bytes: data_len - from,
        resumed_from: from,
        sha256: Some(digest),
    })
}

/// Fetches one file of a tree batch, `path` as its manifest lists it, into the
/// file `out`: through a temporary name beside it, its SHA-256 checked, its
/// mode and mtime restored. A hard link fetches the file it names; a
/// directory or symbolic link is refused. An existing `out` is replaced only
/// with `options.force`. `size` is the batch's size if known.
pub async fn fetch_file(
    retriever: &Retriever,
    request: &Pull,
    size: Option<u64>,
    path: &str,
    out: &Path,
    options: RestoreOptions,
    mut progress: impl FnMut(u64),
) -> Result<Fetched, TreeError> {
    let (manifest, info, _) = fetch_manifest(retriever, request, size).await?;
    manifest.check(super::CheckOptions::default())?;
    let (entry, _) = manifest.find(path).ok_or_else(|| TreeError::BadInput {
        path: path.into(),
        why: "is not in the batch's manifest".into(),
    })?;
    let entry = match &entry.kind {
        EntryKind::Hardlink { target } => manifest.find(target).map(|(e, _)| e).unwrap_or(entry),
        _ => entry,
    };
    let (offset, size) = match (&entry.kind, manifest.find(&entry.path)) {
        (EntryKind::File { size, .. }, Some((_, offset))) => (offset, *size),
        _ => {
            return Err(TreeError::BadInput {
                path: path.into(),
                why: "is a directory or a symbolic link, not a file".into(),
            });
        }
    };
    if !options.force && std::fs::symlink_metadata(out).is_ok() {
        return Err(TreeError::Exists(out.to_path_buf()));
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut one = Manifest {
        entries: vec![entry.clone()],
    };
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| TreeError::BadInput {
            path: out.to_path_buf(),
            why: "not a file name".into(),
        })?;
    one.entries[0].path = name.to_string();
    let mut restore = Restore::new(
        &dir,
        one,
        RestoreOptions {
            force: options.force,
            case_insensitive: false,
        },
    )?;
    if size > 0 {
        let (reader, _) =
            open_range(retriever, request, offset, offset + size, Some(&info)).await?;
        let mut written = 0u64;
        restore
            .write_data(reader, |bytes| {
                written += bytes.len() as u64;
                progress(written);
            })
            .await?;
    } else {
        restore.write_data(&[][..], |_| {}).await?;
    }
    restore.finish()?;
    Ok(Fetched {
        info,
        entries: 1,
        bytes: size,
        resumed_from: 0,
        sha256: None,
    })
}

/// The batch's size, from a pull of its first byte.
async fn probe(retriever: &Retriever, request: &Pull) -> Result<u64, TreeError> {
    match retriever.pull(&request.clone().range(0..1)).await {
        Ok((_, info)) => Ok(info.size),
        Err(e) if e.refuse_code() == Some(crate::wire::RefuseCode::BadRange) => Err(
            TreeError::Invalid("the batch is empty, so not a tree".into()),
        ),
        Err(e) => Err(e.into()),
    }
}

/// A range of the batch as a reader; it must be of the content `same_as`
/// describes, if given.
async fn open_range(
    retriever: &Retriever,
    request: &Pull,
    start: u64,
    end: u64,
    same_as: Option<&BatchInfo>,
) -> Result<(BatchReader, BatchInfo), TreeError> {
    let (reader, info) = retriever.pull(&request.clone().range(start..end)).await?;
    if let Some(first) = same_as
        && !first.chain.matches(&info.chain)
    {
        return Err(TreeError::Integrity(
            "the batch was replaced while it was fetched; fetch it again".into(),
        ));
    }
    Ok((reader, info))
}

/// A range of the batch, read into memory (for the manifest: bounded by
/// [`TAIL_GUESS`] and the manifest limit).
async fn read_range(
    retriever: &Retriever,
    request: &Pull,
    start: u64,
    end: u64,
    same_as: Option<&BatchInfo>,
) -> Result<(BytesMut, BatchInfo), TreeError> {
    let (mut reader, info) = open_range(retriever, request, start, end, same_as).await?;
    let mut bytes = Vec::with_capacity((end - start) as usize);
    reader.read_to_end(&mut bytes).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            TreeError::Integrity(e.to_string())
        } else {
            TreeError::Transfer(crate::Error::Io(e))
        }
    })?;
    Ok((BytesMut::from(&bytes[..]), info))
}
