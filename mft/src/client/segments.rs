//! The segment flows of a send: each keeps segments in flight and matches their
//! acknowledgements, and hands back what it could not deliver.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flow::{FlowReader, FlowWriter, Manager};
use tokio::sync::{broadcast, mpsc};

use super::produce::BufferPool;
use super::{ClientConfig, Event, InFlight, Sender, open_flow};
use crate::error::{Error, Result};
use crate::proto::send_plan::SendPlan;
use crate::session;
use crate::wire::{RefuseCode, Segment, Signature, Stored, TransferId, kind};

/// A sealed segment waiting to be sent (kept until acknowledged, to resend it).
#[derive(Clone)]
pub(super) struct Pending {
    pub(super) index: u64,
    pub(super) ciphertext: Bytes,
    pub(super) signature: Signature,
    pub(super) plaintext_len: u64,
}

/// A segment on a flow, waiting for its acknowledgement, with its share of the
/// in-flight budget.
pub(super) struct Sent {
    pub(super) pending: Pending,
    pub(super) _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What the segment workers share.
pub(super) struct Shared {
    pub(super) manager: Manager,
    pub(super) config: ClientConfig,
    pub(super) transfer_id: TransferId,
    pub(super) queue: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    /// Segments each flow keeps in flight.
    pub(super) depth: usize,
    /// Segments all flows together keep in flight: a permit per segment sent and
    /// not yet acknowledged.
    pub(super) budget: Arc<tokio::sync::Semaphore>,
    /// Where acknowledged segments' memory goes back to the producer.
    pub(super) pool: Arc<BufferPool>,
    pub(super) retry: Mutex<VecDeque<Pending>>,
    /// The plan (what is stored, what must go out) and the bytes acknowledged,
    /// under one lock, so each segment counts once and progress is monotonic.
    pub(super) progress: Mutex<Progress>,
    pub(super) events: broadcast::Sender<Event>,
}

/// A send's progress: its plan, and the plaintext bytes the server has stored.
pub(super) struct Progress {
    pub(super) plan: SendPlan,
    pub(super) bytes: u64,
    /// Sealed (ciphertext) bytes of the same segments.
    pub(super) sealed: u64,
}

impl Shared {
    /// Workers' state for a transfer whose server held `held` segments at open.
    pub(super) fn new(
        sender: &Sender,
        transfer_id: TransferId,
        queue: mpsc::Receiver<Pending>,
        held: Stored,
        in_flight: InFlight,
        pool: Arc<BufferPool>,
    ) -> Self {
        Shared {
            manager: sender.manager.clone(),
            config: sender.config.clone(),
            transfer_id,
            queue: tokio::sync::Mutex::new(queue),
            depth: in_flight.per_flow,
            budget: Arc::new(tokio::sync::Semaphore::new(in_flight.total)),
            pool,
            retry: Mutex::new(VecDeque::new()),
            progress: Mutex::new(Progress {
                plan: SendPlan::new(held),
                bytes: 0,
                sealed: 0,
            }),
            events: sender.events.clone(),
        }
    }

    fn lock_progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Segments the server has stored so far.
    pub(super) fn stored_count(&self) -> u64 {
        self.lock_progress().plan.stored_count()
    }

    /// Whether `pending` still has to go out (the plan decides).
    pub(super) fn must_send(&self, pending: &Pending) -> bool {
        self.lock_progress().plan.must_send(pending.index)
    }

    /// After a failure the server reported holding `stored`: those leave the
    /// resend queue as delivered.
    pub(super) fn server_holds(&self, stored: &Stored) {
        let resent: Vec<Pending> = self.lock_retry().drain(..).collect();
        for p in resent {
            if stored.contains(p.index) {
                self.acked(&p);
            } else {
                self.lock_retry().push_back(p);
            }
        }
    }

    /// Whether the batch may be completed, the input having made `produced`
    /// segments.
    pub(super) fn ready_to_complete(&self, produced: u64) -> Result<()> {
        self.lock_progress()
            .plan
            .ready_to_complete(produced)
            .map_err(|u| {
                Error::Protocol(format!(
                    "{} of {} segments acknowledged",
                    u.stored, u.produced
                ))
            })
    }
}

impl Shared {
    pub(super) async fn next(&self) -> Option<Pending> {
        if let Some(p) = self.lock_retry().pop_front() {
            return Some(p);
        }
        let next = self.queue.lock().await.recv().await;
        // A failed worker may have returned a segment while we waited on the queue.
        next.or_else(|| self.lock_retry().pop_front())
    }

    /// Puts segments sent but not acknowledged back at the front of the retry
    /// queue, oldest first, returning their budget.
    pub(super) fn requeue(&self, outstanding: &mut VecDeque<Sent>) {
        let mut retry = self.lock_retry();
        while let Some(sent) = outstanding.pop_back() {
            retry.push_front(sent.pending);
        }
    }

    /// The next segment to send, once the in-flight budget has room for it.
    pub(super) async fn next_within_budget(
        &self,
    ) -> (Option<tokio::sync::OwnedSemaphorePermit>, Option<Pending>) {
        let permit = self.budget.clone().acquire_owned().await.ok();
        (permit, self.next().await)
    }

    pub(super) fn lock_retry(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.retry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A segment sent and acknowledged: counted, and its memory reused.
    pub(super) fn delivered(&self, sent: Sent) {
        self.acked(&sent.pending);
        self.pool.give(sent.pending.ciphertext);
    }

    /// The server holds `pending`: counted once, with a progress event.
    pub(super) fn acked(&self, pending: &Pending) {
        let mut progress = self.lock_progress();
        if progress.plan.mark_stored(pending.index) {
            progress.bytes += pending.plaintext_len;
            progress.sealed += pending.ciphertext.len() as u64;
            let _ = self.events.send(Event::Progress {
                bytes: progress.bytes,
                segments: progress.plan.stored_count(),
                sealed: progress.sealed,
            });
        }
    }
}

/// What a segment flow's acknowledgement reader reports.
pub(super) type AckResult = Result<u64>;

/// Reads a segment flow's acknowledgements into a channel, so the flow's writer can
/// wait for an acknowledgement or the next segment, whichever comes first, without
/// cancelling a half-read message.
pub(super) async fn read_acks(mut reader: FlowReader, acks: mpsc::Sender<AckResult>) {
    loop {
        let ack = session::recv(&mut reader, kind::SegmentAck)
            .await
            .map(|ack| ack.index);
        let failed = ack.is_err();
        if acks.send(ack).await.is_err() || failed {
            return;
        }
    }
}

/// One segment flow over its connection: the writer half and the task reading its
/// acknowledgements.
pub(super) struct SegmentFlow {
    pub(super) writer: FlowWriter,
    pub(super) acks: mpsc::Receiver<AckResult>,
    pub(super) reader_task: tokio::task::JoinHandle<()>,
}

impl SegmentFlow {
    pub(super) async fn open(shared: &Shared) -> Result<Self> {
        let (reader, writer) = open_flow(&shared.manager, &shared.config).await?;
        let depth = shared.depth;
        let (tx, acks) = mpsc::channel(depth + 1);
        let reader_task = tokio::spawn(read_acks(reader, tx));
        Ok(SegmentFlow {
            writer,
            acks,
            reader_task,
        })
    }

    pub(super) async fn write(
        &mut self,
        transfer_id: &TransferId,
        pending: &Pending,
    ) -> Result<()> {
        let header = Segment::header(transfer_id, pending.index, pending.ciphertext.len() as u32);
        // The ciphertext goes to the transport as it is (no copy over QUIC).
        self.writer
            .write_msg_bytes(&mut [
                Bytes::copy_from_slice(&header),
                pending.ciphertext.clone(),
                Bytes::copy_from_slice(&pending.signature.0),
            ])
            .await?;
        Ok(())
    }

    /// After a failed write: the refusal the server sent before closing, if it sent
    /// one, else `error`. Acknowledgements that arrived first still count.
    pub(super) async fn refusal_or(
        &mut self,
        error: Error,
        shared: &Shared,
        outstanding: &mut VecDeque<Sent>,
    ) -> Error {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some(Ok(index)))
                    if outstanding.front().map(|s| s.pending.index) == Some(index) =>
                {
                    if let Some(sent) = outstanding.pop_front() {
                        shared.delivered(sent);
                    }
                }
                Ok(Some(Err(e @ Error::Refused { .. }))) => return e,
                _ => return error,
            }
        }
    }
}

impl Drop for SegmentFlow {
    fn drop(&mut self) {
        self.reader_task.abort();
    }
}

/// One segment flow: keeps up to `segments_in_flight` queued segments sent and
/// unacknowledged until the queue is empty and every segment is acknowledged. On a
/// failure the segments in hand go back to the retry queue.
pub(super) async fn send_segments(shared: Arc<Shared>) -> Result<()> {
    let mut worker = Worker {
        outstanding: VecDeque::with_capacity(shared.depth),
        shared,
        flow: None,
        drained: false,
    };
    let result = worker.run().await;
    if result.is_err() {
        worker.shared.requeue(&mut worker.outstanding);
    }
    result
}

/// A segment worker's state: its flow (opened when it first has a segment), the
/// segments on it awaiting acknowledgement, oldest first, and whether the queue
/// has run dry.
struct Worker {
    shared: Arc<Shared>,
    flow: Option<SegmentFlow>,
    outstanding: VecDeque<Sent>,
    drained: bool,
}

impl Worker {
    async fn run(&mut self) -> Result<()> {
        while !(self.drained && self.outstanding.is_empty()) {
            match self.next_step().await {
                Step::Next(_, None) => self.drained = true,
                Step::Next(permit, Some(pending)) => self.send(permit, pending).await?,
                Step::Ack(Some(Ok(index))) => self.acknowledged(index)?,
                Step::Ack(Some(Err(e)))
                    if e.refuse_code() == Some(RefuseCode::DuplicateSegment) =>
                {
                    self.skip_duplicate();
                }
                Step::Ack(Some(Err(e))) => return Err(e),
                Step::Ack(None) => {
                    return Err(Error::Protocol("the acknowledgement reader stopped".into()));
                }
            }
        }
        Ok(())
    }

    /// An acknowledgement, or the next segment if there is room for one, whichever
    /// comes first. Waiting for an acknowledgement needs a flow with segments on
    /// it.
    async fn next_step(&mut self) -> Step {
        let room = !self.drained && self.outstanding.len() < self.shared.depth;
        let shared = &self.shared;
        match self.flow.as_mut().filter(|_| !self.outstanding.is_empty()) {
            Some(f) => tokio::select! {
                biased;
                ack = f.acks.recv() => Step::Ack(ack),
                (permit, next) = shared.next_within_budget(), if room => Step::Next(permit, next),
            },
            None => {
                let (permit, next) = shared.next_within_budget().await;
                Step::Next(permit, next)
            }
        }
    }

    /// Sends `pending` on the flow (opened now if need be), unless the plan says
    /// the server holds it already.
    async fn send(
        &mut self,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        pending: Pending,
    ) -> Result<()> {
        if !self.shared.must_send(&pending) {
            self.shared.acked(&pending);
            return Ok(());
        }
        let sent = Sent {
            pending,
            _permit: permit,
        };
        // A flow whose connection is known to be closed (restarted, or lost and
        // noticed) is not written to: with nothing awaiting its
        // acknowledgement, a new one is opened on a new connection. (With
        // segments on it, its failure requeues them, as for any lost flow.)
        if self.outstanding.is_empty()
            && self
                .flow
                .as_ref()
                .is_some_and(|f| f.writer.conn().is_closed())
        {
            self.flow = None;
        }
        let flow = match &mut self.flow {
            Some(flow) => flow,
            None => match SegmentFlow::open(&self.shared).await {
                Ok(flow) => self.flow.insert(flow),
                Err(e) => {
                    self.outstanding.push_back(sent);
                    return Err(e);
                }
            },
        };
        let written = flow.write(&self.shared.transfer_id, &sent.pending).await;
        self.outstanding.push_back(sent);
        if let Err(e) = written {
            let e = flow
                .refusal_or(e, &self.shared, &mut self.outstanding)
                .await;
            if e.refuse_code() != Some(RefuseCode::DuplicateSegment) {
                return Err(e);
            }
            self.skip_duplicate();
        }
        Ok(())
    }

    /// The server stored `index`, which must be the oldest segment on the flow.
    fn acknowledged(&mut self, index: u64) -> Result<()> {
        match self.outstanding.front() {
            Some(front) if front.pending.index == index => {
                if let Some(sent) = self.outstanding.pop_front() {
                    self.shared.delivered(sent);
                }
                Ok(())
            }
            _ => Err(Error::Protocol(format!(
                "acknowledgement of segment {index}, which is not the next one sent"
            ))),
        }
    }

    /// See [`skip_duplicate`]; the server closed the flow, so the next segment
    /// opens a new one.
    fn skip_duplicate(&mut self) {
        skip_duplicate(&self.shared, &mut self.outstanding);
        self.flow = None;
        // What was requeued must still go out: a worker that had seen the queue
        // run dry would otherwise end with it in the retry queue, unsent (seen
        // as "10 of 24 segments acknowledged" after a killed send resumed).
        self.drained = false;
    }
}

/// The server refused the oldest segment on a flow as stored already: an earlier
/// attempt stored it (its acknowledgement was lost, or that attempt's connection
/// was still being served when this one asked what is stored). It counts as
/// delivered; the server closed the flow, so what was sent after it goes out
/// again on a new one.
pub(super) fn skip_duplicate(shared: &Shared, outstanding: &mut VecDeque<Sent>) {
    if let Some(sent) = outstanding.pop_front() {
        shared.delivered(sent);
    }
    shared.requeue(outstanding);
}

/// What a segment flow does next.
pub(super) enum Step {
    Ack(Option<AckResult>),
    Next(Option<tokio::sync::OwnedSemaphorePermit>, Option<Pending>),
}
