//! The mft test harness: a server on a transport with a client manager, and a
//! dishonest client built from the sans-IO `wire`, `handshake` and `crypto`
//! modules, which completes a genuine handshake and then sends what a test asks.

#![allow(unused_imports)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{
    TIMEOUT, TempDir, Transport, allow_all, allow_only, bounded, bounded_for, init_tracing,
    mft_server,
};
use flow::{
    Authorizer, Endpoint, FlowReader, FlowWriter, Identity, Manager, ManagerConfig, PeerKey,
};
use mft::crypto::{self, AesGcm, Chain};
use mft::handshake::{ClientHandshake, PushSecret};
use mft::store::{
    BatchRecord, BatchStore, FsStore, MemoryStore, Store, StoreError, TransferId, TransferRecord,
};
use mft::wire::{
    BatchId, ChainHash, Codec, Complete, Message, Receipt, Refuse, RefuseCode, Segment, Signature,
    Signed, Tag,
};
use mft::{ClientConfig, ErrorKind, Event, Retriever, Sender, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::{broadcast, oneshot};

/// Chunk size of the small round trips and of the dishonest clients' transfers.
pub const CHUNK: u32 = 64 << 10;

// ---------------------------------------------------------------------------------
// Test data: a seeded xorshift pattern of a prime length, repeated. Large inputs need
// not be held in memory and can be regenerated to compare against; copying from the
// pattern is quick even in a debug build, and as its period is prime no chunk (a power
// of two in size) repeats another, so misplaced data shows.

/// Length of the pattern: a prime a little under 1 MiB.
pub const PERIOD: usize = 1_000_003;

/// The byte stream of a seed.
pub struct Prng {
    pub pattern: Arc<[u8]>,
    pub pos: usize,
}

impl Prng {
    pub fn new(seed: u64) -> Self {
        // xorshift64, seeded (never zero).
        let mut state = (seed ^ 0x9e37_79b9_7f4a_7c15) | 1;
        let mut pattern = vec![0u8; PERIOD];
        for word in pattern.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = word.len();
            word.copy_from_slice(&state.to_le_bytes()[..n]);
        }
        Prng {
            pattern: pattern.into(),
            pos: 0,
        }
    }

    /// The next `out.len()` bytes of the stream, however the stream is cut.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() {
            let n = (PERIOD - self.pos).min(out.len() - i);
            out[i..i + n].copy_from_slice(&self.pattern[self.pos..self.pos + n]);
            self.pos = (self.pos + n) % PERIOD;
            i += n;
        }
    }
}

pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    Prng::new(seed).fill(&mut v);
    v
}

/// `len` bytes of the stream of `seed`, as an input; optionally it stops after `gate_at`
/// bytes until the gate opens.
pub struct PrngReader {
    pub prng: Prng,
    pub remaining: u64,
    pub produced: u64,
    pub gate_at: u64,
    pub gate: Option<oneshot::Receiver<()>>,
}

impl PrngReader {
    pub fn new(seed: u64, len: u64) -> Self {
        PrngReader {
            prng: Prng::new(seed),
            remaining: len,
            produced: 0,
            gate_at: u64::MAX,
            gate: None,
        }
    }

    /// Like `new`, but yields nothing past `gate_at` bytes until `gate` fires.
    pub fn gated(seed: u64, len: u64, gate_at: u64, gate: oneshot::Receiver<()>) -> Self {
        PrngReader {
            gate_at,
            gate: Some(gate),
            ..PrngReader::new(seed, len)
        }
    }
}

impl AsyncRead for PrngReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let mut allowed = this.remaining;
        if let Some(gate) = this.gate.as_mut() {
            if this.produced >= this.gate_at {
                match Pin::new(gate).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(_) => this.gate = None,
                }
            } else {
                allowed = allowed.min(this.gate_at - this.produced);
            }
        }
        let n = (buf.remaining() as u64).min(allowed) as usize;
        this.prng.fill(buf.initialize_unfilled_to(n));
        buf.advance(n);
        this.remaining -= n as u64;
        this.produced += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Reads `reader` to its end and checks it yields exactly the `len` bytes of the
/// stream of `seed`, comparing a piece at a time.
pub async fn assert_content(mut reader: impl AsyncRead + Unpin, seed: u64, len: u64) {
    let mut expected = Prng::new(seed);
    let mut got = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = bounded("reading the batch", reader.read(&mut got))
            .await
            .unwrap_or_else(|e| panic!("reading the batch failed after {total} bytes: {e}"));
        if n == 0 {
            break;
        }
        assert!(
            total + n as u64 <= len,
            "the batch has more than the {len} bytes sent"
        );
        expected.fill(&mut want[..n]);
        if got[..n] != want[..n] {
            let at = (0..n).find(|&i| got[i] != want[i]).unwrap_or(0);
            panic!("the batch differs at byte {}", total + at as u64);
        }
        total += n as u64;
    }
    assert_eq!(total, len, "the batch ended early");
}

// ---------------------------------------------------------------------------------
// Set-up.

/// A server on a transport, its store, and a client manager with its own key.
pub struct Harness {
    pub t: Transport,
    pub server: mft::Server,
    pub endpoint: Endpoint,
    pub server_manager: Manager,
    pub store: Arc<dyn Store>,
    pub client: Manager,
}

impl Harness {
    pub async fn new(t: Transport, config: ServerConfig) -> Self {
        Self::with(
            t,
            Arc::new(MemoryStore::new()),
            config,
            allow_all(),
            allow_all(),
        )
        .await
    }

    /// A harness over `store`, with default limits and every key allowed.
    pub async fn over(t: Transport, store: Arc<dyn Store>) -> Self {
        Self::with(t, store, ServerConfig::default(), allow_all(), allow_all()).await
    }

    pub async fn with(
        t: Transport,
        store: Arc<dyn Store>,
        config: ServerConfig,
        senders: super::Policy,
        retrievers: super::Policy,
    ) -> Self {
        let (server, endpoint, server_manager) = mft_server(
            &t,
            Identity::generate(),
            store.clone(),
            config,
            senders,
            retrievers,
        )
        .await;
        let client = t.manager(ManagerConfig::default());
        Harness {
            t,
            server,
            endpoint,
            server_manager,
            store,
            client,
        }
    }

    pub fn server_key(&self) -> PeerKey {
        self.server.identity().public_key()
    }

    pub fn client_key(&self) -> PeerKey {
        self.client.identity().public_key()
    }

    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.endpoint.clone(), self.server_key());
        config.chunk_size(CHUNK);
        config
    }

    pub fn sender(&self) -> Sender {
        Sender::new(self.client.clone(), self.config()).unwrap()
    }

    pub fn retriever(&self) -> Retriever {
        Retriever::new(self.client.clone(), self.config()).unwrap()
    }

    /// A dishonest client with the client manager's key.
    pub fn raw(&self) -> Raw {
        Raw {
            manager: self.client.clone(),
            endpoint: self.endpoint.clone(),
            server_key: self.server_key(),
        }
    }

    /// An honest client of another key still sends and retrieves a batch
    /// `batch_id`, and the store holds it exactly once: what an attack by this
    /// harness's client must leave alone.
    pub async fn assert_others_unaffected(&self, batch_id: &[u8]) {
        let other = self.t.manager(ManagerConfig::default());
        let sender = Sender::new(other.clone(), self.config()).unwrap();
        let data = data(99, 3 * CHUNK as usize + 5);
        sender
            .send(std::io::Cursor::new(data.clone()), batch_id, b"")
            .await
            .unwrap();
        let (mut back, _) = Retriever::new(other.clone(), self.config())
            .unwrap()
            .get(batch_id)
            .await
            .unwrap();
        let mut got = Vec::new();
        back.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "another key's batch came back different");
        let owner = other.identity().public_key();
        let held = self.store.batches().await.unwrap();
        let copies = held
            .iter()
            .filter(|b| b.batch_id == batch_id && b.sender == *owner.as_bytes())
            .count();
        assert_eq!(copies, 1, "another key's batch is stored exactly once");
    }

    /// The batch `batch_id` the client key holds in the store.
    pub async fn stored(&self, batch_id: &[u8]) -> Option<BatchRecord> {
        self.store
            .batch(self.client_key().as_bytes(), batch_id)
            .await
            .unwrap()
    }

    /// Asserts no batch `batch_id` is stored, nor any other.
    pub async fn assert_no_batch(&self, batch_id: &[u8]) {
        assert!(self.stored(batch_id).await.is_none());
        assert!(self.store.batches().await.unwrap().is_empty());
    }

    /// Checks a receipt against what was sent and what the store holds.
    pub async fn check_receipt(&self, receipt: &Receipt, batch_id: &[u8], size: u64) {
        let segments = size.div_ceil(u64::from(CHUNK));
        assert_eq!(&receipt.batch_id[..], batch_id);
        assert_eq!(receipt.size, size);
        assert_eq!(receipt.segment_count, segments);
        assert_eq!(receipt.sender, *self.client_key().as_bytes());
        assert_eq!(receipt.server, *self.server_key().as_bytes());
        assert!(receipt.verify(&receipt.server));
        let record = self.stored(batch_id).await.unwrap();
        assert_eq!(record.batch_id, batch_id);
        assert_eq!(record.transfer, receipt.transfer_id);
        assert_eq!(record.sender, receipt.sender);
        assert_eq!(record.chunk_size, CHUNK);
        assert_eq!(record.segment_count, segments);
        assert_eq!(record.size, size);
        assert_eq!(record.chain, receipt.chain);
        assert_eq!(
            record.receipt,
            Message::Receipt(receipt.clone()).to_bytes().unwrap()
        );
        let stored = self.store.segments(record.transfer).await.unwrap();
        assert_eq!(stored.len() as u64, segments);
        // A completed transfer is no longer open.
        assert!(self.store.transfers().await.unwrap().is_empty());
    }

    /// Retrieves `batch_id` locally and over the network and checks both against the
    /// stream of `seed` and the metadata.
    pub async fn check_retrieval(&self, batch_id: &[u8], seed: u64, size: u64, metadata: &[u8]) {
        let segments = size.div_ceil(u64::from(CHUNK));
        let (local, info) = self
            .server
            .retrieve(&self.client_key(), None, batch_id)
            .await
            .unwrap();
        check_info(&info, batch_id, size, segments, self.client_key(), metadata);
        assert_content(local, seed, size).await;

        let (remote, info) = bounded("get", self.retriever().get(batch_id))
            .await
            .unwrap();
        check_info(&info, batch_id, size, segments, self.client_key(), metadata);
        assert_content(remote, seed, size).await;
    }
}

pub fn check_info(
    info: &mft::BatchInfo,
    batch_id: &[u8],
    size: u64,
    segments: u64,
    sender: PeerKey,
    metadata: &[u8],
) {
    assert_eq!(info.batch_id, batch_id);
    assert_eq!(info.size, size);
    assert_eq!(info.segment_count, segments);
    assert_eq!(info.sender, sender);
    assert_eq!(&info.metadata[..], metadata);
}

// ---------------------------------------------------------------------------------
// A dishonest client, from the wire, handshake and crypto modules.

pub struct Raw {
    pub manager: Manager,
    pub endpoint: Endpoint,
    pub server_key: PeerKey,
}

/// One transfer the dishonest client opened with a genuine handshake.
pub struct RawTransfer {
    pub identity: Identity,
    pub batch_id: Vec<u8>,
    pub secret: PushSecret,
    pub cipher: AesGcm,
}

impl Raw {
    /// A new flow to the server, trusting any key (the handshake checks it).
    pub async fn flow(&self) -> (FlowReader, FlowWriter) {
        bounded(
            "dial",
            self.manager
                .dial(&self.endpoint, Authorizer::any(), TIMEOUT),
        )
        .await
        .unwrap()
        .into_split()
    }

    /// Runs the push handshake for `batch_id`, proposing `chunk_size`.
    pub async fn open(&self, batch_id: &[u8], chunk_size: u32) -> RawTransfer {
        match self.try_open(batch_id, chunk_size).await {
            Ok(transfer) => transfer,
            Err(refuse) => panic!("expected Accept, got {refuse:?}"),
        }
    }

    /// Runs the push handshake for `batch_id`: the transfer, or the refusal.
    pub async fn try_open(&self, batch_id: &[u8], chunk_size: u32) -> Result<RawTransfer, Refuse> {
        let identity = self.manager.identity().clone();
        let id = BatchId::new(batch_id.to_vec()).unwrap();
        let (handshake, hello) = ClientHandshake::push(&identity, &id, chunk_size, b"").unwrap();
        let (mut reader, mut writer) = self.flow().await;
        writer
            .write_msg(&[&Message::Hello(hello).to_bytes().unwrap()])
            .await
            .unwrap();
        let accept = match recv(&mut reader).await {
            Some(Message::Accept(accept)) => accept,
            Some(Message::Refuse(refuse)) => return Err(refuse),
            other => panic!("expected Accept or Refuse, got {other:?}"),
        };
        let secret = handshake.finish_push(&accept, &self.server_key).unwrap();
        Ok(RawTransfer {
            identity,
            batch_id: batch_id.to_vec(),
            cipher: AesGcm::new(secret.data_key.expose()),
            secret,
        })
    }

    /// Sends `segments` on one new flow, each after the previous one's answer: the
    /// indices acknowledged, or the refusal (after which the server must have ended
    /// the flow).
    pub async fn send(&self, segments: &[Segment]) -> Result<Vec<u64>, Refuse> {
        let (mut reader, mut writer) = self.flow().await;
        let mut acked = Vec::new();
        for s in segments {
            send_segment(&mut writer, s).await;
            match recv(&mut reader).await {
                Some(Message::SegmentAck(ack)) => {
                    assert_eq!(ack.index, s.index);
                    acked.push(ack.index);
                }
                Some(Message::Refuse(refuse)) => {
                    assert_flow_ended(&mut reader).await;
                    return Err(refuse);
                }
                other => panic!("expected SegmentAck or Refuse, got {other:?}"),
            }
        }
        Ok(acked)
    }

    /// Sends `segments`, expecting each to be acknowledged.
    pub async fn send_ok(&self, segments: &[Segment]) {
        let expected: Vec<u64> = segments.iter().map(|s| s.index).collect();
        assert_eq!(self.send(segments).await.unwrap(), expected);
    }

    /// Sends `segments`, expecting the last to be refused with `code` and the others
    /// acknowledged.
    pub async fn send_refused(&self, segments: &[Segment], code: RefuseCode) -> Refuse {
        let refuse = self
            .send(segments)
            .await
            .expect_err("the server accepted every segment");
        assert_eq!(refuse.code, code, "refusal: {refuse:?}");
        refuse
    }

    /// Sends a completion on its own flow: the receipt, or the refusal.
    pub async fn complete(&self, complete: &Complete) -> Result<Receipt, Refuse> {
        let (mut reader, mut writer) = self.flow().await;
        writer
            .write_msg(&[&Message::Complete(complete.clone()).to_bytes().unwrap()])
            .await
            .unwrap();
        let answer = recv(&mut reader).await;
        assert_flow_ended(&mut reader).await;
        match answer {
            Some(Message::Receipt(receipt)) => Ok(receipt),
            Some(Message::Refuse(refuse)) => Err(refuse),
            other => panic!("expected Receipt or Refuse, got {other:?}"),
        }
    }

    /// Sends a pause notice for `transfer` on its own flow: the server's note
    /// of it, or the refusal.
    pub async fn pause(
        &self,
        transfer: TransferId,
        paused: bool,
    ) -> Result<mft::wire::PauseNoted, Refuse> {
        let (mut reader, mut writer) = self.flow().await;
        let pause = Message::Pause(mft::wire::Pause {
            transfer_id: transfer,
            paused,
        });
        writer
            .write_msg(&[&pause.to_bytes().unwrap()])
            .await
            .unwrap();
        let answer = recv(&mut reader).await;
        assert_flow_ended(&mut reader).await;
        match answer {
            Some(Message::PauseNoted(noted)) => Ok(noted),
            Some(Message::Refuse(refuse)) => Err(refuse),
            other => panic!("expected PauseNoted or Refuse, got {other:?}"),
        }
    }

    pub async fn complete_refused(&self, complete: &Complete, code: RefuseCode) {
        let refuse = self
            .complete(complete)
            .await
            .expect_err("the server accepted the completion");
        assert_eq!(refuse.code, code, "refusal: {refuse:?}");
    }
}

impl RawTransfer {
    pub fn id(&self) -> TransferId {
        self.secret.transfer_id
    }

    /// Segment `index` carrying `plaintext`, sealed and signed as an honest sender
    /// would.
    pub fn segment(&self, index: u64, plaintext: &[u8]) -> Segment {
        let mut buf = plaintext.to_vec();
        let tag = crypto::seal_segment(&self.cipher, &self.secret.transfer_id, index, &mut buf);
        let mut segment = Segment {
            transfer_id: self.secret.transfer_id,
            index,
            ciphertext: buf.into(),
            signature: Signature([0; 64]),
        };
        resign(&mut segment, &self.identity, tag);
        segment
    }

    /// The segments of `data` cut into chunks of the negotiated size.
    pub fn segments(&self, data: &[u8]) -> Vec<Segment> {
        data.chunks(self.secret.chunk_size as usize)
            .enumerate()
            .map(|(i, chunk)| self.segment(i as u64, chunk))
            .collect()
    }

    /// The chain hash over `segments`, in order.
    pub fn chain(&self, segments: &[Segment]) -> ChainHash {
        let mut chain = Chain::new(&self.secret.transfer_id, &self.batch_id);
        for s in segments {
            chain.push(s.ciphertext.len() as u32, &s.tag());
        }
        chain.value()
    }

    /// A signed completion with these claims.
    pub fn completion(
        &self,
        segment_count: u64,
        size: u64,
        completion_id: [u8; 32],
        chain: ChainHash,
        metadata: &[u8],
    ) -> Complete {
        let sealed = crypto::seal(
            &self.cipher,
            &crypto::METADATA_NONCE,
            &crypto::metadata_aad(&self.secret.transfer_id),
            metadata,
        );
        let mut complete = Complete {
            transfer_id: self.secret.transfer_id,
            segment_count,
            size,
            completion_id,
            chain,
            sealed_metadata: sealed.into(),
            content_digest: [0; 32],
            replace: false,
            signature: Signature([0; 64]),
        };
        complete.sign(&self.identity).unwrap();
        complete
    }

    /// The honest completion for `segments` carrying `size` plaintext bytes.
    pub fn honest_completion(
        &self,
        segments: &[Segment],
        size: usize,
        metadata: &[u8],
    ) -> Complete {
        self.completion(
            segments.len() as u64,
            size as u64,
            self.secret.completion_id,
            self.chain(segments),
            metadata,
        )
    }
}

/// Signs `segment` (as it now stands, with `tag`) as `identity`.
pub fn resign(segment: &mut Segment, identity: &Identity, tag: Tag) {
    let len = segment.ciphertext.len() as u32;
    segment.signature =
        Segment::sign_parts(identity, &segment.transfer_id, segment.index, len, &tag);
}

/// The next message on a flow, decoded; `None` at its clean end.
pub async fn recv(reader: &mut FlowReader) -> Option<Message> {
    let bytes = bounded("an answer", reader.read_msg()).await.unwrap()?;
    Some(Message::from_bytes(bytes).unwrap())
}

/// The server ends a flow after its last answer.
pub async fn assert_flow_ended(reader: &mut FlowReader) {
    match bounded("the end of the flow", reader.read_msg()).await {
        Ok(None) => {}
        Ok(Some(bytes)) => panic!(
            "more after the last answer: {:?}",
            Message::from_bytes(bytes)
        ),
        Err(e) => panic!("the flow failed instead of ending: {e}"),
    }
}

/// The three-segment test batch of the dishonest clients: two full chunks and a
/// short one.
pub fn raw_data(seed: u64) -> Vec<u8> {
    data(seed, 2 * CHUNK as usize + 1000)
}

/// Reads a local retrieval whole.
pub async fn retrieve_all(server: &mft::Server, key: &PeerKey, batch_id: &[u8]) -> Vec<u8> {
    let (mut reader, _) = server.retrieve(key, None, batch_id).await.unwrap();
    let mut out = Vec::new();
    bounded("retrieve", reader.read_to_end(&mut out))
        .await
        .unwrap();
    out
}

/// Writes `segment` on a flow as one message (the answer is the caller's to read).
pub async fn send_segment(writer: &mut FlowWriter, segment: &Segment) {
    let header = Segment::header(
        &segment.transfer_id,
        segment.index,
        segment.ciphertext.len() as u32,
    );
    // A refused flow may be reset under a write; the answer tells.
    let _ = writer
        .write_msg(&[&header, &segment.ciphertext, &segment.signature.0])
        .await;
}
