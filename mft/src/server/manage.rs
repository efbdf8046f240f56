//! A sender managing what it left open: listing its open transfers and aborting
//! one, so an interrupted send never has to wait out its deadline.

use flow::PeerKey;

use super::{CancelReason, Refusal, Server, ServerEvent, now_unix, refusal, stored_batch_id};
use crate::proto::transfer::TransferState;
use crate::wire::{
    Aborted, Message, OpenEntry, OpenTransfers, Pause, PauseNoted, RefuseCode, TransferId,
};

impl Server {
    /// The open transfers of `peer`, from the store's per-sender index, with what
    /// the server holds of each.
    pub(super) async fn handle_list_open(&self, peer: PeerKey) -> Result<Option<Message>, Refusal> {
        let store = &self.inner.store;
        let mut entries = Vec::new();
        for record in store
            .transfers_of(*peer.as_bytes())
            .await?
            .into_iter()
            .take(crate::wire::MAX_OPEN_ENTRIES)
        {
            let (stored_segments, stored_bytes) = self.held_by_transfer(record.transfer).await?;
            entries.push(OpenEntry {
                transfer_id: record.transfer,
                batch_id: stored_batch_id(&record.batch_id)?,
                created_unix: record.created_unix,
                deadline_unix: record.deadline_unix,
                stored_segments,
                stored_bytes,
            });
        }
        Ok(Some(Message::OpenTransfers(OpenTransfers { entries })))
    }

    /// Aborts `peer`'s open transfer `transfer` now: its segments, secret and record
    /// go, and its slot frees. A transfer of another key is unknown, as one that
    /// never existed, and so is one whose batch completed meanwhile (a completion
    /// in progress is waited for).
    pub(super) async fn handle_abort(
        &self,
        peer: PeerKey,
        transfer: TransferId,
    ) -> Result<Option<Message>, Refusal> {
        let unknown = || refusal(RefuseCode::UnknownTransfer, "no open transfer with this id");
        let record = self
            .inner
            .store
            .transfer(transfer)
            .await?
            .filter(|r| r.sender == *peer.as_bytes())
            .ok_or_else(unknown)?;
        let aborted = self
            .forget(&record, TransferState::abort)
            .await
            .map_err(|e| refusal(RefuseCode::Internal, e.to_string()))?;
        if !aborted {
            return Err(refusal(
                RefuseCode::UnknownTransfer,
                "the transfer has completed; its batch is stored",
            ));
        }
        self.cancelled(&record, CancelReason::Aborted);
        Ok(Some(Message::Aborted(Aborted {
            transfer_id: transfer,
        })))
    }

    /// Takes note that `peer` paused its open transfer, or went on with it:
    /// an event and a log line, nothing else. A transfer of another key is
    /// unknown, as one that never existed; one that is not open any more
    /// (completing, complete, expired, aborted) is refused as such.
    pub(super) async fn handle_pause(
        &self,
        peer: PeerKey,
        pause: &Pause,
    ) -> Result<Option<Message>, Refusal> {
        let transfer = pause.transfer_id;
        let open = self.own_transfer(peer, transfer).await?;
        open.state.read().await.admit_pause(now_unix())?;
        let batch_id = super::event_batch_id(&open.record.batch_id);
        self.emit(if pause.paused {
            ServerEvent::Paused {
                peer,
                transfer,
                batch_id,
            }
        } else {
            ServerEvent::Continued {
                peer,
                transfer,
                batch_id,
            }
        });
        Ok(Some(Message::PauseNoted(PauseNoted {
            transfer_id: transfer,
            paused: pause.paused,
        })))
    }
}
