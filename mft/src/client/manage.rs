//! A sender's view of what it left open on the server: its open transfers, and
//! aborting one (what the server holds of it is deleted at once).

use flow::Manager;

use super::{ClientConfig, open_flow};
use crate::error::{Error, Result};
use crate::session;
use crate::wire::{Abort, ListOpen, Message, OpenEntry, TransferId, kind};

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
