//! Retrieval and listing of completed batches.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use flow::{FlowWriter, PeerKey};

use super::{Direction, Refusal, Server, ServerEvent, refusal, stored_batch_id};
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
        let batch = self
            .visible_batch(&peer, &hello.voucher, hello.owner, &hello.batch_id)
            .await?;
        let (batch, _reading) = self.start_reading(batch).await?;
        let layout = BatchLayout::new(batch.chunk_size, batch.compression);
        let wanted = match hello.range {
            None => 0..batch.segment_count,
            Some(range) => {
                layout
                    .covering(range, batch.size)
                    .ok_or_else(|| {
                        refusal(
                            RefuseCode::BadRange,
                            format!(
                                "the range {}-{} ends past the batch's {} bytes",
                                range.start,
                                range.end - 1,
                                batch.size
                            ),
                        )
                    })?
                    .segments
            }
        };
        let secret = self.pull_secret(&batch).await?;
        let accept = handshake::accept_pull(&self.inner.identity, hello, &hello_hash, &secret)
            .map_err(|e| refusal(RefuseCode::BadMessage, e.to_string()))?;
        session::send(writer, &Message::PullAccept(accept))
            .await
            .map_err(|e| refusal(RefuseCode::Internal, e.to_string()))?;
        let mut segments = self.batch_segments(&batch).await?;
        segments.retain(|s| wanted.contains(&s.index));
        let asked = segments.len() as u64;
        let (mut sent_segments, mut sent_bytes) = (0u64, 0u64);
        for s in segments {
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
                self.emit(ServerEvent::RetrievalStopped {
                    peer,
                    transfer: batch.transfer,
                    batch_id: super::event_batch_id(&batch.batch_id),
                    segments: sent_segments,
                    wanted: asked,
                });
                return Ok(None);
            }
            sent_segments += 1;
            sent_bytes += u64::from(s.len);
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(writer).await;
        self.emit(ServerEvent::Retrieved {
            peer,
            transfer: batch.transfer,
            batch_id: super::event_batch_id(&batch.batch_id),
            segments: sent_segments,
            bytes: sent_bytes,
            ranged: hello.range.is_some(),
        });
        Ok(None)
    }

    /// A page of the batches `peer` may retrieve, with their metadata.
    /// The batch `batch_id` of `owner` if `peer` may retrieve it; with no owner,
    /// the one sender's batch of that id that `peer` may retrieve. Unauthorised
    /// and missing look the same, so keys learn nothing about batches they may
    /// not see; several candidates are [`RefuseCode::Ambiguous`], naming only
    /// senders whose batch `peer` could retrieve.
    async fn visible_batch(
        &self,
        peer: &PeerKey,
        voucher: &[u8],
        owner: Option<[u8; 32]>,
        batch_id: &[u8],
    ) -> Result<BatchRecord, Refusal> {
        /// The most senders a retrieval without an owner weighs.
        const MAX_CANDIDATES: usize = 64;
        let not_found = || refusal(RefuseCode::NotFound, "no such batch for this key");
        let store = &self.inner.store;
        let may =
            |owner: &[u8; 32]| self.allowed(peer, voucher, owner, batch_id, Direction::Retrieve);
        let owner = match owner {
            Some(owner) if may(&owner) => owner,
            Some(_) => return Err(not_found()),
            None => {
                let candidates = store.owners_of(batch_id, MAX_CANDIDATES).await?;
                let visible: Vec<[u8; 32]> = candidates.into_iter().filter(|o| may(o)).collect();
                match visible.as_slice() {
                    [] => return Err(not_found()),
                    [one] => *one,
                    several => {
                        let named: Vec<String> = several
                            .iter()
                            .take(4)
                            .map(|o| o.iter().map(|b| format!("{b:02x}")).collect())
                            .collect();
                        return Err(refusal(
                            RefuseCode::Ambiguous,
                            format!(
                                "{} senders hold a batch of this id; name one (for example {})",
                                several.len(),
                                named.join(", ")
                            ),
                        ));
                    }
                }
            }
        };
        store.batch(&owner, batch_id).await?.ok_or_else(not_found)
    }

    /// One page of the batches `peer` may see: the namespaces it may list, in
    /// (sender, batch id) order, from the store's indexes. The cost is one
    /// authorisation per namespace and one range read per page, whatever the
    /// number of batches stored.
    pub(super) async fn handle_list(
        &self,
        peer: PeerKey,
        list: &wire::List,
    ) -> Result<Option<Message>, Refusal> {
        // Metadata per page is bounded too, so a listing always fits one message.
        const MAX_PAGE_METADATA: usize = 8 << 20;
        let limit = (list.limit as usize).clamp(1, wire::MAX_LISTING_ENTRIES);
        let store = &self.inner.store;
        let mut listing = wire::Listing::default();
        let mut metadata_bytes = 0;
        let (mut namespaces, mut after_id) = match (list.owner, &list.after) {
            (None, None) => (Namespaces::all_from(store.as_ref(), None), Vec::new()),
            (None, Some(after)) => (
                Namespaces::all_from(store.as_ref(), Some(after.owner)),
                after.batch_id.to_vec(),
            ),
            (Some(only), None) => (Namespaces::only(store.as_ref(), only), Vec::new()),
            (Some(only), Some(after)) if after.owner == only => (
                Namespaces::only(store.as_ref(), only),
                after.batch_id.to_vec(),
            ),
            (Some(only), Some(after)) if after.owner < only => {
                (Namespaces::only(store.as_ref(), only), Vec::new())
            }
            // The cursor is past the one namespace asked for.
            (Some(_), Some(_)) => return Ok(Some(Message::Listing(listing))),
        };
        while let Some(owner) = namespaces.next().await? {
            let after = std::mem::take(&mut after_id);
            if !self.allowed(&peer, &list.voucher, &owner, &[], Direction::List) {
                continue;
            }
            // One more than fits, to know whether more follow.
            let want = limit - listing.entries.len() + 1;
            for batch in store.batches_of(&owner, &after, want).await? {
                if listing.entries.len() == limit || metadata_bytes >= MAX_PAGE_METADATA {
                    listing.more = true;
                    return Ok(Some(Message::Listing(listing)));
                }
                let metadata = self.open_metadata(&batch).await?;
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
        }
        Ok(Some(Message::Listing(listing)))
    }

    /// The plaintext metadata of a completed batch.
    async fn open_metadata(&self, batch: &BatchRecord) -> Result<Vec<u8>, Refusal> {
        let secret = self.pull_secret(batch).await?;
        crypto::open(
            &Cipher::new(secret.data_key.expose()),
            &crypto::METADATA_NONCE,
            &crypto::metadata_aad(&batch.transfer),
            &batch.sealed_metadata,
        )
        .map_err(|_| {
            StoreError::Corrupt(format!("metadata of batch transfer {}", batch.transfer)).into()
        })
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
            compression: batch.compression,
            sealed_metadata: batch.sealed_metadata.clone(),
        })
    }

    /// Reads a completed batch locally: the plaintext as a stream (verified segment by
    /// segment, the chain checked before the end) and its description. `requester`
    /// must pass the retriever authorisation; `owner` names the sender's namespace,
    /// or `None` resolves the id as a pull hello without an owner does.
    pub async fn retrieve(
        &self,
        requester: &PeerKey,
        owner: Option<&PeerKey>,
        batch_id: &[u8],
    ) -> Result<(BatchReader, BatchInfo)> {
        let owner = owner.map(|o| *o.as_bytes());
        // A refusal, as the error a remote retriever would get.
        let refused = |Refusal(refuse)| Error::Refused {
            code: refuse.code,
            message: refuse.message,
            retry_after: None,
        };
        let batch = self
            .visible_batch(requester, &[], owner, batch_id)
            .await
            .map_err(refused)?;
        let (batch, reading) = self.start_reading(batch).await.map_err(refused)?;
        let secret = self.pull_secret(&batch).await?;
        let source = StoreSource {
            _reading: reading,
            store: self.inner.store.clone(),
            transfer: batch.transfer,
            layout: BatchLayout::new(batch.chunk_size, batch.compression),
            segments: self.batch_segments(&batch).await?.into_iter(),
        };
        crate::stream::open_batch(&batch.batch_id, secret, source, None, Box::new(|_| {}))
    }
}

/// Stored segments as a [`SegmentSource`].
struct StoreSource {
    /// Keeps the batch's data while it is read, should it be removed meanwhile.
    _reading: super::batches::Reading,
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

/// The namespaces a listing walks, in order: one, or every sender with a batch
/// from a starting one on, read from the store a few hundred at a time.
struct Namespaces<'a> {
    store: &'a dyn Store,
    queue: VecDeque<[u8; 32]>,
    read_after: Option<[u8; 32]>,
    exhausted: bool,
}

impl<'a> Namespaces<'a> {
    /// Senders read from the store at a time.
    const PER_READ: usize = 256;

    /// Every namespace from `first` on (itself included), or from the start.
    fn all_from(store: &'a dyn Store, first: Option<[u8; 32]>) -> Self {
        Namespaces {
            store,
            queue: first.into_iter().collect(),
            read_after: first,
            exhausted: false,
        }
    }

    /// Just `owner`'s.
    fn only(store: &'a dyn Store, owner: [u8; 32]) -> Self {
        Namespaces {
            store,
            queue: VecDeque::from([owner]),
            read_after: None,
            exhausted: true,
        }
    }

    async fn next(&mut self) -> Result<Option<[u8; 32]>, StoreError> {
        if self.queue.is_empty() && !self.exhausted {
            let read = self
                .store
                .batch_owners(self.read_after, Self::PER_READ)
                .await?;
            self.exhausted = read.len() < Self::PER_READ;
            self.read_after = read.last().copied().or(self.read_after);
            self.queue.extend(read);
        }
        Ok(self.queue.pop_front())
    }
}
