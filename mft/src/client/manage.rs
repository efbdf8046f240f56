//! A sender's view of what it left on the server: its open transfers, aborting
//! one (what the server holds of it is deleted at once), and deleting a batch.

use flow::Manager;

use super::control::Watch;
use super::{ClientConfig, open_flow};
use crate::error::{Error, Result};
use crate::session;
use crate::wire::{Abort, BatchId, Delete, ListOpen, Message, OpenEntry, Pause, TransferId, kind};

/// The open transfers of our key on the server, in batch-id order.
pub(super) async fn open_transfers(
    manager: &Manager,
    config: &ClientConfig,
) -> Result<Vec<OpenEntry>> {
    let (mut reader, mut writer) = open_flow(manager, config).await?;
    let request = Message::ListOpen(ListOpen);
    let list = session::request(&mut reader, &mut writer, &request, kind::OpenTransfers).await?;
    Ok(list.entries)
}

/// Aborts our open transfer `transfer`.
pub(super) async fn abort(
    manager: &Manager,
    config: &ClientConfig,
    transfer: TransferId,
) -> Result<()> {
    let (mut reader, mut writer) = open_flow(manager, config).await?;
    let request = Message::Abort(Abort {
        transfer_id: transfer,
    });
    let aborted = session::request(&mut reader, &mut writer, &request, kind::Aborted).await?;
    if aborted.transfer_id != transfer {
        return Err(Error::Protocol(
            "the server confirmed aborting another transfer".into(),
        ));
    }
    Ok(())
}

/// Tells the server that our open transfer `transfer` is paused (or not).
pub(super) async fn tell_pause(
    manager: &Manager,
    config: &ClientConfig,
    transfer: TransferId,
    paused: bool,
) -> Result<()> {
    let (mut reader, mut writer) = open_flow(manager, config).await?;
    let request = Message::Pause(Pause {
        transfer_id: transfer,
        paused,
    });
    let noted = session::request(&mut reader, &mut writer, &request, kind::PauseNoted).await?;
    if noted.transfer_id != transfer || noted.paused != paused {
        return Err(Error::Protocol(
            "the server took note of another pause".into(),
        ));
    }
    Ok(())
}

/// Tells the server of every pause and resume of the send of `transfer` as
/// `watch` sees them, from a pause in force already on, until the send ends
/// (the caller aborts this) or the control is gone. Best effort: a failure is
/// logged, and the send goes on.
pub(super) async fn tell_pauses(
    manager: Manager,
    config: ClientConfig,
    transfer: TransferId,
    mut watch: Watch,
) {
    let mut told = false;
    while let Some(paused) = watch.paused_unlike(told).await {
        if let Err(e) = tell_pause(&manager, &config, transfer, paused).await {
            tracing::debug!(error = %e, paused, "the server was not told of the pause");
        }
        told = paused;
    }
}

/// Deletes the batch `batch_id` of `owner` (ours if `None`); its size.
pub(super) async fn delete(
    manager: &Manager,
    config: &ClientConfig,
    owner: Option<[u8; 32]>,
    batch_id: BatchId,
) -> Result<u64> {
    let (mut reader, mut writer) = open_flow(manager, config).await?;
    let request = Message::Delete(Delete {
        owner,
        batch_id: batch_id.clone(),
        voucher: bytes::Bytes::from(config.voucher.clone()),
    });
    let deleted = session::request(&mut reader, &mut writer, &request, kind::Deleted).await?;
    let ours = *manager.identity().public_key().as_bytes();
    if deleted.batch_id != batch_id || deleted.owner != owner.unwrap_or(ours) {
        return Err(Error::Protocol(
            "the server confirmed deleting another batch".into(),
        ));
    }
    Ok(deleted.size)
}
