//! Trees through the library: a directory of 1,000 small files and a few large
//! ones round-trips with contents, modes, mtimes and links intact; one file comes
//! back alone; nothing is replaced without `force`; and hostile manifests are
//! refused with nothing written outside the target (or inside it).

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use common::mft_harness::*;
use common::{Transport, bounded, init_tracing};
use mft::tree::{
    CheckOptions, Entry, EntryKind, Manifest, Packing, RestoreOptions, Timestamp, TreeError,
};
use mft::{Pull, ServerConfig};

on_every_transport!(a_tree_round_trips_with_its_attributes_and_links,);

/// What a tree holds, as comparable values: per relative path, its kind and
/// content (or link target), mode and mtime; hard links by a shared inode tag.
fn snapshot(root: &Path) -> BTreeMap<String, (String, u32, i64, i64)> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    fn walk(
        root: &Path,
        at: &Path,
        out: &mut BTreeMap<String, (String, u32, i64, i64)>,
        inodes: &mut BTreeMap<u64, String>,
    ) {
        let mut children: Vec<_> = std::fs::read_dir(at)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        children.sort();
        for path in children {
            let m = std::fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if m.is_dir() {
                walk(root, &path, out, inodes);
                "dir".to_string()
            } else {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
                let digest = common::sha256_hex(&std::fs::read(&path).unwrap());
                format!("file {digest} same-as {first}")
            };
            let (mode, secs, nanos) = if m.file_type().is_symlink() {
                (0, 0, 0)
            } else {
                (m.mode() & 0o777, m.mtime(), m.mtime_nsec())
            };
            out.insert(rel, (what, mode, secs, nanos));
        }
    }
    walk(root, root, &mut out, &mut inodes);
    out
}

fn touch(path: &Path, secs: u64, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let when = UNIX_EPOCH + Duration::new(secs, 123_456_789);
    std::fs::File::open(path)
        .and_then(|f| f.set_modified(when))
        .unwrap();
}

/// `src/top` (1,000 small files in ten directories, three large ones, an empty
/// file and directory, links in and out) and `src/loose.txt`.
fn build_tree(src: &Path) -> (PathBuf, PathBuf) {
    let top = src.join("top");
    std::fs::create_dir_all(top.join("empty")).unwrap();
    for d in 0..10 {
        let dir = top.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            let path = dir.join(format!("f{f:03}.txt"));
            std::fs::write(&path, data(d * 1000 + f, (f as usize * 37) % 900)).unwrap();
            touch(
                &path,
                1_600_000_000 + f,
                if f % 7 == 0 { 0o600 } else { 0o644 },
            );
        }
        touch(&dir, 1_650_000_000 + d, 0o750);
    }
    for (i, len) in [3 * CHUNK as usize + 5, 5 * CHUNK as usize, 1]
        .iter()
        .enumerate()
    {
        let path = top.join(format!("large-{i}.bin"));
        std::fs::write(&path, data(99 + i as u64, *len)).unwrap();
        touch(&path, 1_700_000_000, 0o755);
    }
    std::fs::write(top.join("empty.txt"), b"").unwrap();
    std::os::unix::fs::symlink("d3/f042.txt", top.join("link-in")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", top.join("link-out")).unwrap();
    std::os::unix::fs::symlink("../../../x", top.join("d1/link-up")).unwrap();
    std::fs::hard_link(top.join("large-0.bin"), top.join("hard.bin")).unwrap();
    touch(&top.join("empty"), 1_500_000_000, 0o700);
    touch(&top.join("d1"), 1_650_000_001, 0o750);
    touch(&top, 1_550_000_000, 0o755);
    let loose = src.join("loose.txt");
    std::fs::write(&loose, b"on its own").unwrap();
    (top, loose)
}

async fn a_tree_round_trips_with_its_attributes_and_links(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let (top, loose) = build_tree(&src);
    let packing = Packing::plan(&[top.clone(), loose.clone()], true).unwrap();
    let skipped: Vec<_> = packing.skipped().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        skipped,
        vec![top.join("d1/link-up"), top.join("link-out")],
        "links leading out are left out"
    );
    assert_eq!(packing.file_count(), 1000 + 3 + 1 + 1);
    let receipt = bounded("send", h.sender().send(packing.reader(), b"tree", b"{}"))
        .await
        .unwrap();

    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let request = Pull::batch(b"tree");
    let fetched = bounded(
        "fetch",
        mft::tree::fetch(
            &h.retriever(),
            &request,
            None,
            &dest,
            RestoreOptions::default(),
            None,
            |_| {},
        ),
    )
    .await
    .unwrap();
    assert_eq!(fetched.entries, 1 + 1 + 10 + 1000 + 3 + 1 + 1 + 1 + 1);
    assert_eq!(fetched.info.size, receipt.size);
    assert_eq!(
        fetched.sha256,
        Some(receipt.content_digest),
        "the whole batch's digest"
    );
    // The source minus what was skipped is what arrived.
    std::fs::remove_file(top.join("link-out")).unwrap();
    std::fs::remove_file(top.join("d1/link-up")).unwrap();
    touch(&top.join("d1"), 1_650_000_001, 0o750);
    touch(&top, 1_550_000_000, 0o755);
    let want = snapshot(&src);
    let got = snapshot(&dest);
    assert_eq!(got.len(), want.len());
    for (path, entry) in &want {
        assert_eq!(got.get(path), Some(entry), "{path}");
    }
    assert!(
        std::fs::read_dir(&dest).unwrap().count() == 2,
        "no staging directory is left"
    );

    // A batch that is not what its sender declared (in its metadata) is
    // refused before anything is moved into place.
    let declared = tmp.path().join("declared");
    std::fs::create_dir(&declared).unwrap();
    let mut wrong = receipt.content_digest;
    wrong[0] ^= 1;
    let refused = mft::tree::fetch(
        &h.retriever(),
        &request,
        None,
        &declared,
        RestoreOptions::default(),
        Some(wrong),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(refused, TreeError::Integrity(_)), "{refused}");
    assert!(everything(&declared).is_empty(), "nothing restored");

    // Again: nothing is replaced without force; with it, files are.
    let again = mft::tree::fetch(
        &h.retriever(),
        &request,
        None,
        &dest,
        RestoreOptions::default(),
        None,
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(again, TreeError::Exists(_)), "{again}");
    let force = RestoreOptions {
        force: true,
        ..Default::default()
    };
    mft::tree::fetch(&h.retriever(), &request, None, &dest, force, None, |_| {})
        .await
        .unwrap();
    assert_eq!(snapshot(&dest), got);

    // One file alone, and a hard link's file.
    for (path, source) in [
        ("top/large-1.bin", top.join("large-1.bin")),
        ("top/hard.bin", top.join("large-0.bin")),
        ("top/empty.txt", top.join("empty.txt")),
    ] {
        let out = tmp.path().join("one");
        let _ = std::fs::remove_file(&out);
        let one = mft::tree::fetch_file(
            &h.retriever(),
            &request,
            None,
            path,
            &out,
            RestoreOptions::default(),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(one.bytes, std::fs::metadata(&source).unwrap().len());
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&source).unwrap(),
            "{path}"
        );
        let (m, s) = (
            std::fs::metadata(&out).unwrap(),
            std::fs::metadata(&source).unwrap(),
        );
        assert_eq!((m.mode() & 0o777, m.mtime()), (s.mode() & 0o777, s.mtime()));
    }
    let err = mft::tree::fetch_file(
        &h.retriever(),
        &request,
        None,
        "top/d2",
        &tmp.path().join("nope"),
        RestoreOptions::default(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not a file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_while_it_is_sent_fails_the_send() {
    init_tracing();
    let h = Harness::new(Transport::quic(), ServerConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a"), data(1, 1000)).unwrap();
    let packing = Packing::plan(std::slice::from_ref(&dir), true).unwrap();
    std::fs::write(dir.join("a"), data(2, 1001)).unwrap();
    let err = bounded("send", h.sender().send(packing.reader(), b"changed", b"{}"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("changed while it was sent"),
        "{err}"
    );
    h.assert_no_batch(b"changed").await;
}

#[test]
fn inputs_that_cannot_be_a_tree_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::create_dir_all(b.join("a")).unwrap();
    std::fs::write(&a, b"x").unwrap();
    let err = Packing::plan(std::slice::from_ref(&b), false).unwrap_err();
    assert!(err.to_string().contains("-r"), "{err}");
    let err = Packing::plan(&[a.clone(), b.join("a")], true).unwrap_err();
    assert!(err.to_string().contains("also named"), "{err}");
    let err = Packing::plan(&[tmp.path().join("missing")], true).unwrap_err();
    assert!(matches!(err, TreeError::Io { .. }), "{err}");
}

/// A batch whose bytes are `files` and then `manifest`'s tail, as a hostile
/// sender would make it.
fn hostile_batch(files: &[u8], manifest: &Manifest) -> Vec<u8> {
    let mut bytes = files.to_vec();
    bytes.extend_from_slice(&manifest.encode_tail().unwrap());
    bytes
}

fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry {
        path: path.into(),
        mode: 0o644,
        mtime: Timestamp::default(),
        kind,
    }
}

fn file(path: &str, content: &[u8]) -> Entry {
    entry(
        path,
        EntryKind::File {
            size: content.len() as u64,
            sha256: sha256(content),
        },
    )
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let hex = common::sha256_hex(bytes);
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// Every file and directory under `root`, relative.
fn everything(root: &Path) -> Vec<String> {
    snapshot(root).into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_manifests_are_refused_and_nothing_is_written() {
    init_tracing();
    let h = Harness::new(Transport::quic(), ServerConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let target = root.join("target");
    let outside = root.join("outside");
    std::fs::create_dir(&target).unwrap();
    std::fs::create_dir(&outside).unwrap();
    // Already in the target: a link to outside, which must never be followed.
    std::os::unix::fs::symlink("../outside", target.join("evil")).unwrap();
    let before = everything(root);

    let x = b"payload";
    let dir = |p: &str| entry(p, EntryKind::Dir);
    let symlink = |p: &str, t: &str| entry(p, EntryKind::Symlink { target: t.into() });
    let hardlink = |p: &str, t: &str| entry(p, EntryKind::Hardlink { target: t.into() });
    let cases: Vec<(&str, Vec<Entry>, bool)> = vec![
        ("parent", vec![file("../outside/x", x)], true),
        (
            "absolute",
            vec![file(&format!("{}/x", outside.display()), x)],
            true,
        ),
        (
            "dotdot inside",
            vec![dir("a"), file("a/../../outside/x", x)],
            true,
        ),
        ("empty component", vec![dir("a"), file("a//x", x)], true),
        ("control character", vec![file("x\r", x)], true),
        ("duplicate", vec![file("x", x), file("x", b"")], true),
        ("link up", vec![symlink("l", "../outside")], false),
        ("link absolute", vec![symlink("l", "/etc")], false),
        (
            "link through a link",
            vec![dir("d"), symlink("d/up", ".."), symlink("l", "d/up/..")],
            false,
        ),
        (
            "hard link outside",
            vec![hardlink("h", "/etc/passwd")],
            false,
        ),
        ("hard link up", vec![hardlink("h", "../outside/x")], false),
        (
            "file under a link",
            vec![symlink("l", "."), file("l/x", x)],
            true,
        ),
        (
            "through a link already there",
            vec![dir("evil"), file("evil/x", x)],
            true,
        ),
        ("orphan", vec![file("nodir/x", x)], true),
    ];
    for (name, entries, has_data) in cases {
        let manifest = Manifest { entries };
        let files: &[u8] = if has_data { x } else { b"" };
        let files = if name == "duplicate" { x } else { files };
        let id = format!("hostile-{name}");
        bounded(
            "send",
            h.sender().send(
                std::io::Cursor::new(hostile_batch(files, &manifest)),
                id.as_bytes(),
                b"{}",
            ),
        )
        .await
        .unwrap();
        let err = mft::tree::fetch(
            &h.retriever(),
            &Pull::batch(id.as_bytes()),
            None,
            &target,
            RestoreOptions::default(),
            None,
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, TreeError::Hostile(_) | TreeError::InTheWay { .. }),
            "{name}: {err}"
        );
        assert_eq!(everything(root), before, "{name}: nothing was written");
    }

    // Names that collide when case is ignored, on request.
    let cased = Manifest {
        entries: vec![file("Report.pdf", x), file("report.PDF", b"")],
    };
    assert!(cased.check(CheckOptions::default()).is_ok());
    bounded(
        "send",
        h.sender().send(
            std::io::Cursor::new(hostile_batch(x, &cased)),
            b"cased",
            b"{}",
        ),
    )
    .await
    .unwrap();
    let strict = RestoreOptions {
        case_insensitive: true,
        ..Default::default()
    };
    let err = mft::tree::fetch(
        &h.retriever(),
        &Pull::batch(b"cased"),
        None,
        &target,
        strict,
        None,
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TreeError::Hostile(_)), "{err}");
    assert_eq!(everything(root), before);

    // A file whose bytes are not what the manifest says: refused, and the files
    // before it, already staged, do not appear either.
    let lying = Manifest {
        entries: vec![file("good", x), file("bad", b"not this")],
    };
    let mut bytes = x.to_vec();
    bytes.extend_from_slice(b"but that");
    bytes.extend_from_slice(&lying.encode_tail().unwrap());
    bounded(
        "send",
        h.sender()
            .send(std::io::Cursor::new(bytes), b"lying", b"{}"),
    )
    .await
    .unwrap();
    let err = mft::tree::fetch(
        &h.retriever(),
        &Pull::batch(b"lying"),
        None,
        &target,
        RestoreOptions::default(),
        None,
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TreeError::Integrity(_)), "{err}");
    assert_eq!(everything(root), before);

    // A batch that is not a tree at all.
    bounded(
        "send",
        h.sender()
            .send(std::io::Cursor::new(data(5, 5000)), b"plain", b"{}"),
    )
    .await
    .unwrap();
    let err = mft::tree::fetch(
        &h.retriever(),
        &Pull::batch(b"plain"),
        None,
        &target,
        RestoreOptions::default(),
        None,
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TreeError::Invalid(_)), "{err}");
    assert_eq!(everything(root), before);
}

/// A tree of a few files, the middle ones large enough for a fetch to be cut
/// off inside them: its source directory, and the size of its file data.
fn resumable_tree(src: &Path) -> u64 {
    let top = src.join("top");
    std::fs::create_dir_all(&top).unwrap();
    let files = [
        ("a-small.txt", 1_000),
        ("b-first.bin", 2 << 20),
        ("c-second.bin", 16 << 20),
        ("d-last.txt", 10),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        std::fs::write(top.join(name), data(500 + i as u64, *len)).unwrap();
    }
    files.iter().map(|(_, len)| *len as u64).sum()
}

/// Fetches `request` into `dest`, cancelling the pull once `after` bytes of
/// file data are staged: the fetch's error.
async fn fetch_cut_off(h: &Harness, request: &Pull, dest: &Path, after: u64) -> TreeError {
    let retriever = h.retriever();
    bounded(
        "cut-off fetch",
        mft::tree::fetch(
            &retriever,
            request,
            None,
            dest,
            RestoreOptions::default(),
            None,
            |written| {
                if written > after {
                    retriever.cancel();
                }
            },
        ),
    )
    .await
    .expect_err("the fetch is cut off")
}

/// A resumable tree sent as batch `tree`, and a fetch of it into `dest` cut
/// off past 4 MiB: what the resume tests start from.
struct CutOff {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    dest: PathBuf,
    request: Pull,
    data_len: u64,
    receipt: mft::Receipt,
    error: TreeError,
}

impl CutOff {
    async fn new(h: &Harness) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let data_len = resumable_tree(&src);
        let packing = Packing::plan(&[src.join("top")], true).unwrap();
        let receipt = bounded("send", h.sender().send(packing.reader(), b"tree", b"{}"))
            .await
            .unwrap();
        let request = Pull::batch(b"tree");
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let error = fetch_cut_off(h, &request, &dest, 4 << 20).await;
        CutOff {
            _tmp: tmp,
            src,
            dest,
            request,
            data_len,
            receipt,
            error,
        }
    }

    /// The staging directory the cut-off fetch left.
    fn staging(&self) -> PathBuf {
        std::fs::read_dir(&self.dest)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.is_dir())
            .expect("a staging directory")
    }

    /// Fetches the tree into `dest` again.
    async fn fetch(&self, h: &Harness) -> Result<mft::tree::Fetched, TreeError> {
        bounded(
            "the fetch again",
            mft::tree::fetch(
                &h.retriever(),
                &self.request,
                None,
                &self.dest,
                RestoreOptions::default(),
                None,
                |_| {},
            ),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_tree_fetch_resumes_from_what_it_staged() {
    init_tracing();
    let h = Harness::new(Transport::Quic, ServerConfig::default()).await;
    let cut = CutOff::new(&h).await;
    let (dest, data_len) = (&cut.dest, cut.data_len);
    let (_, info, _) = mft::tree::fetch_manifest(&h.retriever(), &cut.request, None)
        .await
        .unwrap();
    let key = mft::tree::ResumeKey::from(&info);
    assert!(matches!(cut.error, TreeError::Transfer(_)), "{}", cut.error);
    let (staging, kept) = mft::tree::staged(dest, &key).expect("the cut-off fetch kept its work");
    assert!(
        (4 << 20..data_len).contains(&kept),
        "kept {kept} of {data_len}"
    );
    let top_level: Vec<_> = std::fs::read_dir(dest)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        top_level.len(),
        2,
        "only the staging directory and its state: {top_level:?}"
    );

    let mut first_progress = None;
    let fetched = bounded(
        "resumed fetch",
        mft::tree::fetch(
            &h.retriever(),
            &cut.request,
            None,
            dest,
            RestoreOptions::default(),
            None,
            |written| {
                first_progress.get_or_insert(written);
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(fetched.resumed_from, kept, "resumed from all it kept");
    assert_eq!(fetched.bytes, data_len - kept, "fetched only the rest");
    assert_eq!(fetched.sha256, Some(cut.receipt.content_digest));
    assert!(
        first_progress.is_some_and(|p| p <= kept),
        "progress counts the staged bytes first"
    );
    assert_eq!(snapshot(dest), snapshot(&cut.src));
    assert!(!staging.exists(), "the staging directory is gone");
    assert_eq!(everything(dest).len(), snapshot(&cut.src).len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_file_changed_on_disk_is_refused_and_fetched_afresh() {
    init_tracing();
    let h = Harness::new(Transport::Quic, ServerConfig::default()).await;
    let cut = CutOff::new(&h).await;
    // Past 4 MiB, the first two files are staged whole.
    let staged = cut.staging().join("top/b-first.bin");
    let mut bytes = std::fs::read(&staged).unwrap();
    assert_eq!(bytes.len(), 2 << 20, "staged whole");
    bytes[12_345] ^= 1;
    std::fs::write(&staged, &bytes).unwrap();

    let refused = cut.fetch(&h).await.unwrap_err();
    assert!(
        matches!(&refused, TreeError::Integrity(m) if m.contains("staged copy")),
        "{refused}"
    );
    assert!(everything(&cut.dest).is_empty(), "what was staged is gone");

    let fetched = cut.fetch(&h).await.unwrap();
    assert_eq!(fetched.resumed_from, 0);
    assert_eq!(snapshot(&cut.dest), snapshot(&cut.src));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_file_cut_short_resumes_from_where_it_ends() {
    init_tracing();
    let h = Harness::new(Transport::Quic, ServerConfig::default()).await;
    let cut = CutOff::new(&h).await;
    // The second file, staged whole, loses its second half (a disk that
    // dropped what was not synced): the state still counts it all.
    let staged = cut.staging().join("top/b-first.bin");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let fetched = cut.fetch(&h).await.unwrap();
    assert_eq!(
        fetched.resumed_from,
        1_000 + (1 << 20),
        "from the cut file's end"
    );
    assert_eq!(fetched.bytes, cut.data_len - fetched.resumed_from);
    assert_eq!(snapshot(&cut.dest), snapshot(&cut.src));
}
