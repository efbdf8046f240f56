//! Push transfers: hello, segments, resume and completion.

use std::sync::Arc;

use flow::{FlowReader, FlowWriter, PeerKey};

use super::{
    CancelReason, Direction, Refusal, Server, ServerEvent, now_unix, refusal, stored_batch_id,
    too_large,
};
use crate::crypto::{self, Cipher};
use crate::error::Result;
use crate::handshake::{self, HelloProblem, PushSecret};
use crate::proto::completion;
use crate::proto::layout::{BatchLayout, Tally};
use crate::proto::transfer::{
    Refused, TransferState, abandoned, may_open_another, negotiate_chunk_size,
};
use crate::session;
use crate::store::{BatchRecord, SegmentInfo, StoreError, TransferId, TransferRecord};
use crate::wire::{
    self, Codec, Complete, Compression, DataKey, Hello, Message, Receipt, RefuseCode, Segment,
    SegmentAck, Signature, Signed, Stored,
};

/// An open transfer's keys and state, kept in memory while it is open.
pub(super) struct OpenTransfer {
    pub(super) record: TransferRecord,
    pub(super) secret: PushSecret,
    cipher: Cipher,
    /// Decides what the transfer may take. Segments hold it shared while they are
    /// checked and stored; a completion or a reclaim holds it exclusively, so no
    /// segment lands in a batch being completed, completed or reclaimed.
    pub(super) state: tokio::sync::RwLock<TransferState>,
    /// When a hello, resume or segment last touched it (Unix seconds).
    last_active: std::sync::atomic::AtomicU64,
}

impl OpenTransfer {
    pub(super) fn new(record: TransferRecord, secret: PushSecret, max_segments: u64) -> Self {
        OpenTransfer {
            cipher: Cipher::new(secret.data_key.expose()),
            state: tokio::sync::RwLock::new(TransferState::open(
                record.deadline_unix,
                max_segments,
            )),
            record,
            secret,
            last_active: std::sync::atomic::AtomicU64::new(now_unix()),
        }
    }

    /// Notes activity now: the transfer is not abandoned.
    pub(super) fn touch(&self) {
        self.last_active
            .store(now_unix(), std::sync::atomic::Ordering::Relaxed);
    }

    fn last_active(&self) -> u64 {
        self.last_active.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The refusal the peer gets for what a transfer's state refused.
impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Self {
        let code = match refused {
            Refused::Expired | Refused::Aborted | Refused::Complete => RefuseCode::UnknownTransfer,
            Refused::Completing => RefuseCode::Busy,
            Refused::TooManySegments { .. } => RefuseCode::SegmentTooLarge,
        };
        refusal(code, refused.message())
    }
}

impl Server {
    pub(super) async fn handle_hello(
        &self,
        peer: PeerKey,
        hello: &Hello,
    ) -> Result<Option<Message>, Refusal> {
        let hello_hash = handshake::check_hello(hello, &peer).map_err(|p| match p {
            HelloProblem::IdentityMismatch => refusal(
                RefuseCode::IdentityMismatch,
                "the sender key is not the connection's identity",
            ),
            HelloProblem::BadSignature => refusal(RefuseCode::BadSignature, "hello signature"),
        })?;
        if !self.allowed(
            &peer,
            &hello.voucher,
            peer.as_bytes(),
            &hello.batch_id,
            Direction::Send,
        ) {
            return Err(refusal(
                RefuseCode::NotAuthorized,
                format!("key {peer} may not send this batch"),
            ));
        }
        let chunk_size = negotiate_chunk_size(hello.chunk_size, self.inner.config.max_chunk_size)
            .map_err(|min| {
            let proposed = hello.chunk_size;
            refusal(
                RefuseCode::BadMessage,
                format!("chunk size {proposed} is below {min}"),
            )
        })?;
        let store = &self.inner.store;
        // A replacement opens beside the batch it replaces, which stays visible
        // until the replacement completes.
        if !hello.replace
            && store
                .batch(peer.as_bytes(), &hello.batch_id)
                .await?
                .is_some()
        {
            return Err(refusal(
                RefuseCode::BatchExists,
                "this key already holds a batch with this id (confirm the same \
                 content, or replace it)",
            ));
        }
        // The same sender opening the same batch again resumes its open transfer,
        // with the same keys: segments it already stored stay valid.
        let sender = *peer.as_bytes();
        let (secret, opened) = match store.find_transfer(sender, &hello.batch_id).await? {
            Some(record) => (self.resume_transfer(record.transfer, hello).await?, false),
            None => match self.new_transfer(peer, hello, chunk_size).await? {
                Some(secret) => (secret, true),
                // Another hello of this sender opened it meanwhile (the store lets
                // only one): resume that one.
                None => {
                    let record = store
                        .find_transfer(sender, &hello.batch_id)
                        .await?
                        .ok_or_else(|| self.busy("the transfer is being opened; retry"))?;
                    (self.resume_transfer(record.transfer, hello).await?, false)
                }
            },
        };
        let accept = handshake::accept_push(&self.inner.identity, hello, &hello_hash, &secret)
            .map_err(|e| refusal(RefuseCode::BadMessage, e.to_string()))?;
        let transfer = secret.transfer_id;
        self.emit(if opened {
            ServerEvent::Opened {
                peer,
                batch_id: hello.batch_id.clone(),
                transfer,
                replace: hello.replace,
            }
        } else {
            ServerEvent::Resumed {
                peer,
                transfer,
                batch_id: hello.batch_id.clone(),
            }
        });
        Ok(Some(Message::Accept(accept)))
    }

    /// The secret of an open transfer its sender's `hello` reopens. It keeps the
    /// compression it settled on when it opened, for a hello that offers it; one
    /// that does not is told none, and sends its segments as they are (which a
    /// compressed transfer always allows).
    pub(super) async fn resume_transfer(
        &self,
        transfer: TransferId,
        hello: &Hello,
    ) -> Result<PushSecret, Refusal> {
        let open = self.open_transfer(transfer).await?;
        open.state.read().await.admit_resume(now_unix())?;
        open.touch();
        let compression = if hello.compression == open.secret.compression {
            open.secret.compression
        } else {
            Compression::None
        };
        Ok(PushSecret {
            new_transfer: false,
            compression,
            ..open.secret.clone()
        })
    }

    /// Opens a new transfer for `hello`, storing its record and secret together;
    /// `None` if another hello of the same sender opened one for the batch first.
    pub(super) async fn new_transfer(
        &self,
        peer: PeerKey,
        hello: &Hello,
        chunk_size: u32,
    ) -> Result<Option<PushSecret>, Refusal> {
        let store = &self.inner.store;
        let open = store.open_transfer_count(*peer.as_bytes()).await?;
        if !may_open_another(open, self.inner.config.max_open_transfers_per_peer)
            && !self.give_up_abandoned(&peer).await?
        {
            return Err(self.busy(
                "too many open transfers for this key: complete or abort one, \
                 or retry once one has been idle for the server's abandon time",
            ));
        }
        let secret = PushSecret {
            transfer_id: TransferId::random(),
            completion_id: crypto::random32(),
            data_key: DataKey::random(),
            chunk_size,
            max_metadata: self.inner.config.max_metadata,
            new_transfer: true,
            compression: if self.inner.config.compression {
                hello.compression
            } else {
                Compression::None
            },
        };
        let transfer = secret.transfer_id;
        let now = now_unix();
        let record = TransferRecord {
            transfer,
            batch_id: hello.batch_id.to_vec(),
            sender: *peer.as_bytes(),
            chunk_size: secret.chunk_size,
            created_unix: now,
            deadline_unix: now.saturating_add(self.inner.config.transfer_deadline.as_secs()),
            compression: secret.compression,
        };
        match store
            .put_transfer_with_secret(record.clone(), self.seal_at_rest(&transfer, &secret))
            .await
        {
            Ok(()) => {}
            // Refused before anything was written: no secret is left behind.
            Err(StoreError::AlreadyExists(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let open = Arc::new(OpenTransfer::new(
            record,
            secret.clone(),
            self.inner.config.max_segments,
        ));
        self.lock_open().insert(transfer, open);
        Ok(Some(secret))
    }

    /// Aborts `peer`'s open transfer idle longest, if it has been idle for the
    /// abandon time (`transfer::abandoned`); true if one was. A transfer not in
    /// memory has been idle at most since it was opened or this server started,
    /// whichever is later.
    async fn give_up_abandoned(&self, peer: &PeerKey) -> Result<bool, Refusal> {
        let records = self.inner.store.transfers_of(*peer.as_bytes()).await?;
        let started = self.inner.started_unix;
        let candidates: Vec<(usize, u64)> = {
            let open = self.lock_open();
            records
                .iter()
                .enumerate()
                .map(|(n, r)| {
                    let active = open
                        .get(&r.transfer)
                        .map_or(r.created_unix.max(started), |o| o.last_active());
                    (n, active)
                })
                .collect()
        };
        let after = self.inner.config.abandoned_after.as_secs();
        let Some(n) = abandoned(candidates, now_unix(), after) else {
            return Ok(false);
        };
        let record = &records[n];
        let given_up = self
            .forget(record, TransferState::abort)
            .await
            .map_err(|e| refusal(RefuseCode::Internal, e.to_string()))?;
        if given_up {
            self.cancelled(record, CancelReason::Abandoned);
        }
        Ok(given_up)
    }

    /// An open transfer by id, from memory or (after a restart) from the store.
    pub(super) async fn open_transfer(
        &self,
        transfer: TransferId,
    ) -> Result<Arc<OpenTransfer>, Refusal> {
        if let Some(open) = self.lock_open().get(&transfer) {
            return Ok(open.clone());
        }
        let store = &self.inner.store;
        let record = store
            .transfer(transfer)
            .await?
            .ok_or_else(|| refusal(RefuseCode::UnknownTransfer, "no open transfer with this id"))?;
        if record.deadline_unix < now_unix() {
            return Err(refusal(RefuseCode::UnknownTransfer, "the transfer expired"));
        }
        let sealed = store
            .secret(transfer)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("transfer {transfer} has no secret")))?;
        let (data_key, completion_id) = self.open_at_rest(&transfer, &sealed)?;
        let secret = PushSecret {
            transfer_id: transfer,
            completion_id,
            data_key,
            chunk_size: record.chunk_size,
            max_metadata: self.inner.config.max_metadata,
            new_transfer: false,
            compression: record.compression,
        };
        let open = Arc::new(OpenTransfer::new(
            record,
            secret,
            self.inner.config.max_segments,
        ));
        self.lock_open().insert(transfer, open.clone());
        Ok(open)
    }

    /// An open transfer that `peer` sent.
    pub(super) async fn own_transfer(
        &self,
        peer: PeerKey,
        transfer: TransferId,
    ) -> Result<Arc<OpenTransfer>, Refusal> {
        let open = self.open_transfer(transfer).await?;
        if open.record.sender != *peer.as_bytes() {
            // Not the owner: say nothing about whether it exists.
            return Err(refusal(
                RefuseCode::UnknownTransfer,
                "no open transfer with this id",
            ));
        }
        Ok(open)
    }

    /// Stores a flow's segments, each acknowledged once durable. `first` comes
    /// with its share of the pending-bytes budget; every later one takes its share
    /// from its length prefix before its body is read.
    pub(super) async fn handle_segments(
        &self,
        peer: PeerKey,
        first: (Segment, super::pending::Reservation),
        reader: &mut FlowReader,
        writer: &mut FlowWriter,
    ) -> Result<Option<Message>, Refusal> {
        let (mut segment, mut permit) = first;
        let open = self.own_transfer(peer, segment.transfer_id).await?;
        let mut scratch = Vec::new();
        loop {
            // The state decides, and is held while the segment is stored, so a
            // completion or reclaim cannot start in between.
            let state = open.state.read().await;
            state.admit_segment(segment.index, now_unix())?;
            open.touch();
            let sender = open.record.sender;
            let len = segment.ciphertext.len() as u64;
            self.reserve_quota(&sender, len).await?;
            let index = match self.store_segment(&open, segment, &mut scratch).await {
                Ok(index) => index,
                Err(refused) => {
                    self.release_quota(&sender, len).await;
                    return Err(refused);
                }
            };
            drop(state);
            drop(permit);
            self.emit(ServerEvent::Progress {
                peer,
                transfer: open.record.transfer,
                index,
                bytes: len,
            });
            if let Err(e) = session::send(writer, &Message::SegmentAck(SegmentAck { index })).await
            {
                tracing::debug!(%peer, error = %e, "could not acknowledge a segment");
                return Ok(None);
            }
            let len = match reader.peek_msg_len().await {
                Ok(Some(len)) => len,
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "segment flow failed");
                    return too_large(&e).map_or(Ok(None), Err);
                }
            };
            permit = self.reserve(peer, len).await?;
            let next = match reader.read_msg().await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "segment flow failed");
                    return Ok(None);
                }
            };
            segment = match Message::from_bytes(next) {
                Ok(Message::Segment(s)) if s.transfer_id == open.secret.transfer_id => s,
                Ok(Message::Segment(_)) => {
                    return Err(refusal(
                        RefuseCode::BadMessage,
                        "one transfer per segment flow",
                    ));
                }
                Ok(other) => {
                    return Err(refusal(
                        RefuseCode::BadMessage,
                        format!("expected Segment, got {}", other.name()),
                    ));
                }
                Err(e) => return Err(refusal(RefuseCode::BadMessage, e.to_string())),
            };
        }
    }

    /// Checks one segment, stores it durably and acknowledges it.
    pub(super) async fn store_segment(
        &self,
        open: &Arc<OpenTransfer>,
        segment: Segment,
        scratch: &mut Vec<u8>,
    ) -> Result<u64, Refusal> {
        let layout = BatchLayout::new(open.record.chunk_size, open.record.compression);
        let len = segment.ciphertext.len();
        let index = segment.index;
        layout
            .admit(index, len)
            .map_err(|e| refusal(RefuseCode::SegmentTooLarge, e.message()))?;
        let tag = segment.tag();
        let len32 = len as u32; // at most 16 MiB + 16, checked above
        let transfer_id = open.secret.transfer_id;
        if !segment.verify(&open.record.sender) {
            return Err(refusal(
                RefuseCode::BadSignature,
                format!("segment {index} signature"),
            ));
        }
        let authentic = authenticate(&open.cipher, transfer_id, &segment, scratch).await;
        if !authentic {
            return Err(refusal(
                RefuseCode::BadSegment,
                format!("segment {index} fails authentication (tampered, replayed or misplaced)"),
            ));
        }
        let info = SegmentInfo {
            index,
            len: len32,
            tag,
        };
        let offset = layout.offset(index);
        match self
            .inner
            .store
            .put_segment(open.record.transfer, info, offset, segment.ciphertext)
            .await
        {
            Ok(()) => Ok(index),
            Err(StoreError::AlreadyExists(_)) => Err(refusal(
                RefuseCode::DuplicateSegment,
                format!("segment {index} is already stored"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn handle_resume(
        &self,
        peer: PeerKey,
        transfer: TransferId,
    ) -> Result<Option<Message>, Refusal> {
        let open = self.own_transfer(peer, transfer).await?;
        open.state.read().await.admit_resume(now_unix())?;
        let stored = self.inner.store.segments(open.record.transfer).await?;
        self.emit(ServerEvent::Resumed {
            peer,
            transfer,
            batch_id: super::event_batch_id(&open.record.batch_id),
        });
        Ok(Some(Message::Stored(Stored::from_indices(
            stored.iter().map(|s| s.index),
        ))))
    }

    pub(super) async fn handle_complete(
        &self,
        peer: PeerKey,
        complete: &Complete,
    ) -> Result<Option<Message>, Refusal> {
        let open = match self.own_transfer(peer, complete.transfer_id).await {
            Ok(open) => open,
            // Not open (any more): perhaps completed, and this is the sender asking
            // again for a receipt it lost.
            Err(unknown) => return self.repeated_completion(peer, complete, unknown).await,
        };
        // Held for the whole completion: segments wait, and then find it complete.
        let mut state = open.state.write().await;
        match state.begin_completion(now_unix()) {
            Ok(()) => {}
            Err(Refused::Complete) => {
                // Completed by a completion that raced this one.
                drop(state);
                let refused = Refused::Complete.into();
                return self.repeated_completion(peer, complete, refused).await;
            }
            Err(refused) => return Err(refused.into()),
        }
        let outcome = self.complete_open(peer, &open, complete).await;
        state.end_completion(outcome.is_ok());
        outcome
    }

    /// The stored receipt, if `complete` repeats the completion of a batch `peer`
    /// sent; `otherwise` if it names no batch of `peer`'s, so strangers learn
    /// nothing. A repeat that claims anything but what was stored is refused.
    async fn repeated_completion(
        &self,
        peer: PeerKey,
        complete: &Complete,
        otherwise: Refusal,
    ) -> Result<Option<Message>, Refusal> {
        let store = &self.inner.store;
        let transfer = complete.transfer_id;
        let batch = match store.batch_of_transfer(transfer).await? {
            Some(batch) if batch.sender == *peer.as_bytes() => batch,
            _ => return Err(otherwise),
        };
        check_completion_signature(&batch.sender, complete)?;
        let sealed = store.secret(transfer).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("batch transfer {transfer} has no secret"))
        })?;
        let (_, completion_id) = self.open_at_rest(&transfer, &sealed)?;
        if !completion::repeats(&batch, &completion_id, complete) {
            return Err(refusal(
                RefuseCode::BatchExists,
                "this transfer was completed with other content; its batch stays as stored",
            ));
        }
        let receipt = super::batches::stored_receipt(&batch)?;
        self.emit(ServerEvent::AlreadyStored { peer, transfer });
        Ok(Some(receipt))
    }

    /// Checks a completion against the stored segments, stores the batch and signs
    /// its receipt. The caller holds the transfer's state as completing.
    async fn complete_open(
        &self,
        peer: PeerKey,
        open: &OpenTransfer,
        complete: &Complete,
    ) -> Result<Option<Message>, Refusal> {
        let tally = self.check_completion(open, complete).await?;
        let batch_id = stored_batch_id(&open.record.batch_id)?;
        let receipt = self.sign_receipt(&open.record, &tally, complete.content_digest)?;
        let transfer = open.record.transfer;
        let record = BatchRecord {
            batch_id: open.record.batch_id.clone(),
            transfer,
            sender: open.record.sender,
            chunk_size: open.record.chunk_size,
            segment_count: tally.count,
            size: tally.size,
            sealed_metadata: complete.sealed_metadata.to_vec(),
            chain: tally.chain,
            completed_unix: receipt.completed_unix,
            content_digest: complete.content_digest,
            receipt: Message::Receipt(receipt.clone())
                .to_bytes()
                .map_err(|e| refusal(RefuseCode::Internal, e.to_string()))?,
            compression: open.record.compression,
        };
        let store = &self.inner.store;
        let stored = if complete.replace {
            store.complete_replacing(record).await
        } else {
            store.complete_transfer(record).await.map(|()| None)
        };
        let replaced = match stored {
            Ok(replaced) => replaced,
            Err(StoreError::AlreadyExists(_)) => {
                return Err(refusal(
                    RefuseCode::BatchExists,
                    "a batch with this id exists",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        self.lock_open().remove(&transfer);
        self.recount_quota(&open.record.sender).await;
        if replaced.is_some() {
            self.reclaim_retired_now().await;
        }
        self.emit(ServerEvent::Completed {
            peer,
            batch_id,
            transfer,
            segments: tally.count,
            bytes: tally.size,
            replaced: replaced.map(|old| old.transfer),
        });
        Ok(Some(Message::Receipt(receipt)))
    }

    /// Every check of a completion (PROTOCOL.md §11): the sender's signature, the
    /// secret completion id, the metadata's size, the stored segments against the
    /// claim (`BatchLayout::tally`), the chain, and the metadata's authenticity.
    /// Returns what the stored segments add up to.
    async fn check_completion(
        &self,
        open: &OpenTransfer,
        complete: &Complete,
    ) -> Result<Tally, Refusal> {
        check_completion_signature(&open.record.sender, complete)?;
        if !crypto::secrets_equal(&complete.completion_id, &open.secret.completion_id) {
            return Err(refusal(
                RefuseCode::WrongCompletionId,
                "wrong completion id",
            ));
        }
        let max = self.inner.config.max_metadata;
        completion::check_metadata_size(complete.sealed_metadata.len(), max).map_err(|len| {
            refusal(
                RefuseCode::MetadataTooLarge,
                format!("metadata of {len} bytes exceeds the limit of {max}"),
            )
        })?;
        let transfer = open.record.transfer;
        let segments = self.inner.store.segments(transfer).await?;
        let tally = BatchLayout::new(open.record.chunk_size, open.record.compression)
            .tally(
                &transfer,
                &open.record.batch_id,
                &segments,
                complete.segment_count,
                complete.size,
            )
            .map_err(|e| refusal(RefuseCode::WrongSegmentCount, e.message()))?;
        if !tally.chain.matches(&complete.chain) {
            return Err(refusal(
                RefuseCode::ChainMismatch,
                "the chain hash does not match the stored segments",
            ));
        }
        crypto::open(
            &open.cipher,
            &crypto::METADATA_NONCE,
            &crypto::metadata_aad(&transfer),
            &complete.sealed_metadata,
        )
        .map_err(|_| refusal(RefuseCode::BadSegment, "metadata fails authentication"))?;
        Ok(tally)
    }

    /// The server's signed receipt for the batch `record` becomes.
    fn sign_receipt(
        &self,
        record: &TransferRecord,
        tally: &Tally,
        content_digest: [u8; 32],
    ) -> Result<Receipt, Refusal> {
        let mut receipt = Receipt {
            batch_id: stored_batch_id(&record.batch_id)?,
            transfer_id: record.transfer,
            sender: record.sender,
            segment_count: tally.count,
            size: tally.size,
            chain: tally.chain,
            content_digest,
            completed_unix: now_unix(),
            server: *self.inner.identity.public_key().as_bytes(),
            signature: Signature([0; 64]),
        };
        receipt
            .sign(&self.inner.identity)
            .map_err(|e| refusal(RefuseCode::Internal, e.to_string()))?;
        Ok(receipt)
    }
}

/// Checks that the transfer's sender signed `complete`.
fn check_completion_signature(sender: &[u8; 32], complete: &Complete) -> Result<(), Refusal> {
    if complete.verify(sender) {
        Ok(())
    } else {
        Err(refusal(RefuseCode::BadSignature, "completion signature"))
    }
}

/// Whether `segment`'s ciphertext authenticates under the transfer's key at its
/// place: one AES-GCM pass, off the I/O tasks unless the segment is small enough
/// that the hop would cost more. What is stored is the ciphertext itself, so data
/// stays encrypted at rest; the plaintext goes to `scratch`, a buffer the flow
/// reuses for every segment, so checking costs no allocation.
async fn authenticate(
    cipher: &Cipher,
    transfer_id: TransferId,
    segment: &Segment,
    scratch: &mut Vec<u8>,
) -> bool {
    let index = segment.index;
    let open = move |cipher: &Cipher, ciphertext: &[u8], buf: &mut Vec<u8>| {
        buf.clear();
        buf.extend_from_slice(ciphertext);
        crypto::open_segment(cipher, &transfer_id, index, buf).is_ok()
    };
    if segment.ciphertext.len() <= crypto::INLINE_CRYPTO_MAX + wire::TAG_LEN {
        return open(cipher, &segment.ciphertext, scratch);
    }
    let cipher = cipher.clone();
    let ciphertext = segment.ciphertext.clone();
    let mut buf = std::mem::take(scratch);
    let (authentic, buf) = tokio::task::spawn_blocking(move || {
        let ok = open(&cipher, &ciphertext, &mut buf);
        (ok, buf)
    })
    .await
    .unwrap_or((false, Vec::new()));
    *scratch = buf;
    authentic
}
