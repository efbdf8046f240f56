//! Retrieval and listing of completed batches.

use std::sync::Arc;

use bytes::Bytes;
use flow::{FlowWriter, PeerKey};

use super::{Direction, Refusal, Server, refusal, stored_batch_id};
use crate::crypto::{self, Cipher};
use crate::error::{Error, Result};
use crate::handshake::{self, HelloProblem, PullSecret};
use crate::proto::layout::BatchLayout;
use crate::session;
use crate::store::{BatchRecord, SegmentInfo, Store, StoreError, TransferId};
use crate::stream::{BatchInfo, BatchReader, SegmentSource};
use crate::wire::{self, Message, PullHello, PullSegment, RefuseCode};

impl Server {
    pub(super) async fn handle_pull(
        &self,
        peer: PeerKey,
        hello: &PullHello,
        writer: &mut FlowWriter,
    ) -> Result<Option<Message>, Refusal> {
        let hello_hash = handshake::check_pull_hello(hello, &peer).map_err(|p| match p {
            HelloProblem::IdentityMismatch => refusal(
                RefuseCode::IdentityMismatch,
                "the retriever key is not the connection's identity",
            ),
            HelloProblem::BadSignature => refusal(RefuseCode::BadSignature, "pull hello signature"),
        })?;
        // Unauthorised and missing look the same, so keys learn nothing about
        // batches they may not see.
        let not_found = || refusal(RefuseCode::NotFound, "no such batch for this key");
        if !self.allowed(&peer, &hello.voucher, &hello.batch_id, Direction::Retrieve) {
            return Err(not_found());
        }
        let batch = self
            .inner
            .store
            .batch(&hello.batch_id)
            .await?
            .ok_or_else(not_found)?;
        let secret = self.pull_secret(&batch).await?;
        let accept = handshake::accept_pull(&self.inner.identity, hello, &hello_hash, &secret)
            .map_err(|e| refusal(RefuseCode::BadMessage, e.to_string()))?;
        session::send(writer, &Message::PullAccept(accept))
            .await
            .map_err(|e| refusal(RefuseCode::Internal, e.to_string()))?;
        let layout = BatchLayout::new(batch.chunk_size);
        for s in self.batch_segments(&batch).await? {
            let data = self
                .inner
                .store
                .read_segment(batch.transfer, layout.offset(s.index), s.len)
                .await?;
            let header = PullSegment::header(s.index, s.len);
            let sent = writer
                .write_msg_bytes(&mut [Bytes::copy_from_slice(&header), data])
                .await;
            if let Err(e) = sent {
                tracing::debug!(%peer, error = %e, "retriever went away");
                return Ok(None);
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(writer).await;
        tracing::info!(%peer, batch = batch.transfer.to_hex(), "batch retrieved");
        Ok(None)
    }

    /// A page of the batches `peer` may retrieve, with their metadata.
    pub(super) async fn handle_list(
        &self,
        peer: PeerKey,
        list: &wire::List,
    ) -> Result<Option<Message>, Refusal> {
        // Metadata per page is bounded too, so a listing always fits one message.
        const MAX_PAGE_METADATA: usize = 8 << 20;
        let limit = (list.limit as usize).clamp(1, wire::MAX_LISTING_ENTRIES);
        let mut listing = wire::Listing::default();
        let mut metadata_bytes = 0;
        for batch in self.inner.store.batches().await? {
            if batch.batch_id.as_slice() <= list.after.as_ref()
                || !self.allowed(&peer, &list.voucher, &batch.batch_id, Direction::Retrieve)
            {
                continue;
            }
            if listing.entries.len() == limit || metadata_bytes >= MAX_PAGE_METADATA {
                listing.more = true;
                break;
            }
            let secret = self.pull_secret(&batch).await?;
            let metadata = crypto::open(
                &Cipher::new(secret.data_key.expose()),
                &crypto::METADATA_NONCE,
                &crypto::metadata_aad(&batch.transfer),
                &batch.sealed_metadata,
            )
            .map_err(|_| {
                StoreError::Corrupt(format!("metadata of batch transfer {}", batch.transfer))
            })?;
            metadata_bytes += metadata.len();
            listing.entries.push(wire::ListingEntry {
                batch_id: stored_batch_id(&batch.batch_id)?,
                size: batch.size,
                segment_count: batch.segment_count,
                sender: batch.sender,
                completed_unix: batch.completed_unix,
                metadata: Bytes::from(metadata),
            });
        }
        Ok(Some(Message::Listing(listing)))
    }

    /// The segments of a completed batch: those its record counts, never more, so
    /// nothing stored under its transfer afterwards can change what is retrieved.
    pub(super) async fn batch_segments(
        &self,
        batch: &BatchRecord,
    ) -> Result<Vec<SegmentInfo>, StoreError> {
        let mut segments = self.inner.store.segments(batch.transfer).await?;
        segments.retain(|s| s.index < batch.segment_count);
        Ok(segments)
    }

    /// What a retriever of `batch` needs: its key (unsealed from the store) and
    /// description.
    pub(super) async fn pull_secret(&self, batch: &BatchRecord) -> Result<PullSecret, StoreError> {
        let sealed = self
            .inner
            .store
            .secret(batch.transfer)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("batch transfer {} has no secret", batch.transfer))
            })?;
        let (data_key, _) = self.open_at_rest(&batch.transfer, &sealed)?;
        Ok(PullSecret {
            transfer_id: batch.transfer,
            data_key,
            chunk_size: batch.chunk_size,
            segment_count: batch.segment_count,
            size: batch.size,
            chain: batch.chain,
            sender: batch.sender,
            sealed_metadata: batch.sealed_metadata.clone(),
        })
    }

    /// Reads a completed batch locally: the plaintext as a stream (verified segment by
    /// segment, the chain checked before the end) and its description. `requester`
    /// must pass the retriever authorisation.
    pub async fn retrieve(
        &self,
        requester: &PeerKey,
        batch_id: &[u8],
    ) -> Result<(BatchReader, BatchInfo)> {
        let not_found = || Error::Refused {
            code: RefuseCode::NotFound,
            message: "no such batch for this key".into(),
            retry_after: None,
        };
        if !self.allowed(requester, &[], batch_id, Direction::Retrieve) {
            return Err(not_found());
        }
        let batch = self
            .inner
            .store
            .batch(batch_id)
            .await?
            .ok_or_else(not_found)?;
        let secret = self.pull_secret(&batch).await?;
        let source = StoreSource {
            store: self.inner.store.clone(),
            transfer: batch.transfer,
            layout: BatchLayout::new(batch.chunk_size),
            segments: self.batch_segments(&batch).await?.into_iter(),
        };
        crate::stream::open_batch(&batch.batch_id, secret, source)
    }
}

/// Stored segments as a [`SegmentSource`].
struct StoreSource {
    store: Arc<dyn Store>,
    transfer: TransferId,
    layout: BatchLayout,
    segments: std::vec::IntoIter<SegmentInfo>,
}

#[async_trait::async_trait]
impl SegmentSource for StoreSource {
    async fn next_segment(&mut self) -> Result<Option<(u64, Bytes)>> {
        let Some(s) = self.segments.next() else {
            return Ok(None);
        };
        let data = self
            .store
            .read_segment(self.transfer, self.layout.offset(s.index), s.len)
            .await?;
        Ok(Some((s.index, data)))
    }
}
