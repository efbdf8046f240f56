//! A full disk (RELIABILITY.md promise 6): the server's store on a small tmpfs
//! fills up mid-batch. The sender gets a retryable storage error, nothing is
//! acknowledged that is not stored, no partial batch becomes visible, and once
//! there is room again the same send resumes and completes byte-identical.
//!
//! Mounting needs root, which CI has; elsewhere the test says it was skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Transport, allow_all, bounded_for, init_tracing, payload};
use flow::ManagerConfig;
use mft::store::{BatchStore, FsStore, SegmentStore, TransferStore};
use mft::wire::RefuseCode;
use tokio::io::AsyncReadExt;

/// A tmpfs of a given size, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts one of `size` (as `mount -o size=` takes it), or `None` without root.
    fn mount(size: &str) -> Option<SmallDisk> {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .ok()?;
        if !mounted.status.success() {
            let why = String::from_utf8_lossy(&mounted.stderr);
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and must be able to mount a tmpfs: {why}"
            );
            eprintln!("skipped: cannot mount a tmpfs (needs root): {why}");
            return None;
        }
        Some(SmallDisk {
            dir,
            _parent: parent,
        })
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Gives the file system `size` in all.
    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "remount {size}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_retryable_error_and_loses_nothing() {
    init_tracing();
    let Some(disk) = SmallDisk::mount("3m") else {
        return;
    };
    let store = Arc::new(FsStore::open(disk.path()).unwrap());
    let t = Transport::mem();
    let (server, endpoint, _server_manager) = common::mft_server(
        &t,
        flow::Identity::generate(),
        store.clone(),
        mft::ServerConfig::default(),
        allow_all(),
        allow_all(),
    )
    .await;
    let client = t.manager(ManagerConfig::default());
    let mut config = mft::ClientConfig::new(endpoint, server.identity().public_key());
    config.chunk_size(64 << 10).retries(1);
    let sender = mft::Sender::new(client.clone(), config.clone()).unwrap();
    // Three times the disk.
    let data = payload(9 << 20, 7);
    let err = bounded_for(
        Duration::from_secs(120),
        "a send onto a full disk",
        sender.send(std::io::Cursor::new(data.clone()), b"big", b""),
    )
    .await
    .unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::Internal), "{err}");
    assert!(
        err.is_retryable() || matches!(err, mft::Error::RetriesExhausted { .. }),
        "{err}"
    );

    // No batch, and what is stored of the open transfer reads back whole.
    let owner = *client.identity().public_key().as_bytes();
    assert!(store.batch(&owner, b"big").await.unwrap().is_none());
    let open = store
        .find_transfer(owner, b"big")
        .await
        .unwrap()
        .expect("kept for a resume");
    let stored = store.segments(open.transfer).await.unwrap();
    assert!(
        !stored.is_empty() && stored.len() < 144,
        "{} segments",
        stored.len()
    );
    for s in &stored {
        let offset = s.index * ((64 << 10) + 16);
        let read = store
            .read_segment(open.transfer, offset, s.len)
            .await
            .unwrap();
        assert_eq!(read.len() as u32, s.len);
        assert_eq!(
            &read[read.len() - 16..],
            &s.tag.0,
            "segment {} is whole",
            s.index
        );
    }

    // Room again: the same send resumes and completes; the batch reads back.
    disk.grow("64m");
    let receipt = bounded_for(
        Duration::from_secs(120),
        "the send after the disk grew",
        sender.send(std::io::Cursor::new(data.clone()), b"big", b""),
    )
    .await
    .unwrap();
    assert_eq!(receipt.size, data.len() as u64);
    let (mut back, _) = server
        .retrieve(&client.identity().public_key(), None, b"big")
        .await
        .unwrap();
    let mut got = Vec::new();
    back.read_to_end(&mut got).await.unwrap();
    assert!(got == data, "the batch reads back byte-identical");
}
