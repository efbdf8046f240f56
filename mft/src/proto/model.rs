//! Property tests of the core's rules together: random interleavings of segments
//! (in order, reordered, duplicated, tampered, from another transfer), resumes,
//! completions (honest and false), repeats, the clock passing the deadline and
//! reclaims, applied to one transfer through the functions the server calls in the
//! order it calls them. Whatever the order, the only outcomes are a refusal the
//! rules name or the original bytes: never a stored batch with a wrong layout, never
//! a segment taken after completion or expiry.

use bytes::Bytes;
use proptest::prelude::*;

use super::completion;
use super::layout::BatchLayout;
use super::transfer::{Phase, Refused, TransferState};
use crate::crypto::{self, AesGcm, Chain};
use crate::store::{BatchRecord, SegmentInfo};
use crate::wire::{ChainHash, Complete, Signature, Tag, TransferId};

const CHUNK: u32 = 4096;
const DEADLINE: u64 = 10;
const OURS: TransferId = TransferId([1; 16]);
const OTHER: TransferId = TransferId([2; 16]);

/// One thing that happens to the transfer.
#[derive(Clone, Debug)]
enum Op {
    /// The sender sends segment `index` (possibly past the end), honestly sealed,
    /// sealed for another transfer, or with a flipped byte.
    Segment { index: u64, kind: SegmentKind },
    /// The sender's hello reopens the transfer (a resume).
    Resume,
    /// A completion claiming the batch, or a false claim.
    Complete(Claim),
    /// The clock moves on.
    Wait(u64),
    /// The reclaimer runs.
    Reclaim,
}

#[derive(Clone, Copy, Debug)]
enum SegmentKind {
    Honest,
    Foreign,
    Tampered,
}

#[derive(Clone, Copy, Debug)]
enum Claim {
    Honest,
    OneMore,
    OneFewer,
    WrongChain,
}

/// The server's side of one transfer, as the shells keep it.
struct Model {
    state: TransferState,
    layout: BatchLayout,
    cipher: AesGcm,
    stored: std::collections::BTreeMap<u64, (SegmentInfo, Bytes)>,
    batch: Option<BatchRecord>,
    reclaimed: bool,
    now: u64,
}

/// The batch the sender means to send, sealed.
struct Batch {
    plaintext: Vec<u8>,
    segments: Vec<Bytes>,
    foreign: Vec<Bytes>,
    chain: ChainHash,
}

fn seal(cipher: &AesGcm, transfer: &TransferId, index: u64, chunk: &[u8]) -> (Bytes, Tag) {
    let mut buf = chunk.to_vec();
    let tag = crypto::seal_segment(cipher, transfer, index, &mut buf);
    (Bytes::from(buf), tag)
}

fn batch(len: usize) -> Batch {
    let plaintext: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let ours = AesGcm::new(&[3; 32]);
    let theirs = AesGcm::new(&[4; 32]);
    let mut chain = Chain::new(&OURS, b"batch");
    let mut segments = Vec::new();
    let mut foreign = Vec::new();
    for (i, chunk) in plaintext.chunks(CHUNK as usize).enumerate() {
        let (ct, tag) = seal(&ours, &OURS, i as u64, chunk);
        chain.push(ct.len() as u32, &tag);
        segments.push(ct);
        foreign.push(seal(&theirs, &OTHER, i as u64, chunk).0);
    }
    Batch {
        plaintext,
        segments,
        foreign,
        chain: chain.value(),
    }
}

fn tag_of(ciphertext: &[u8]) -> Tag {
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&ciphertext[ciphertext.len() - 16..]);
    Tag(tag)
}

/// What an operation came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Stored,
    Refused(&'static str),
    Receipt,
}

impl Model {
    fn new() -> Self {
        Model {
            state: TransferState::open(DEADLINE, 64),
            layout: BatchLayout::new(CHUNK, crate::wire::Compression::None),
            cipher: AesGcm::new(&[3; 32]),
            stored: Default::default(),
            batch: None,
            reclaimed: false,
            now: 0,
        }
    }

    fn refused(r: Refused) -> Outcome {
        Outcome::Refused(match r {
            Refused::Expired => "expired",
            Refused::Aborted => "aborted",
            Refused::Complete => "complete",
            Refused::Completing => "completing",
            Refused::TooManySegments { .. } => "too many segments",
        })
    }

    /// The segment path of the server: state, layout, authentication, duplicate.
    fn segment(&mut self, index: u64, ciphertext: Bytes) -> Outcome {
        if self.reclaimed {
            return Outcome::Refused("unknown transfer");
        }
        if let Err(r) = self.state.admit_segment(index, self.now) {
            return Self::refused(r);
        }
        if self.layout.admit(index, ciphertext.len()).is_err() {
            return Outcome::Refused("segment too large");
        }
        let mut buf = ciphertext.to_vec();
        if crypto::open_segment(&self.cipher, &OURS, index, &mut buf).is_err() {
            return Outcome::Refused("bad segment");
        }
        if self.stored.contains_key(&index) {
            return Outcome::Refused("duplicate");
        }
        let info = SegmentInfo {
            index,
            len: ciphertext.len() as u32,
            tag: tag_of(&ciphertext),
        };
        self.stored.insert(index, (info, ciphertext));
        Outcome::Stored
    }

    fn complete(&mut self, claim: &Complete) -> Outcome {
        if self.reclaimed {
            return Outcome::Refused("unknown transfer");
        }
        match self.state.begin_completion(self.now) {
            Ok(()) => {}
            Err(Refused::Complete) => {
                let batch = self
                    .batch
                    .as_ref()
                    .expect("a complete transfer has a batch");
                return if completion::repeats(batch, &[9; 32], claim) {
                    Outcome::Receipt
                } else {
                    Outcome::Refused("batch exists")
                };
            }
            Err(r) => return Self::refused(r),
        }
        let infos: Vec<SegmentInfo> = self.stored.values().map(|(info, _)| *info).collect();
        let tally = self
            .layout
            .tally(&OURS, b"batch", &infos, claim.segment_count, claim.size);
        let outcome = match tally {
            Err(_) => Outcome::Refused("wrong segment count"),
            Ok(t) if !t.chain.matches(&claim.chain) => Outcome::Refused("chain mismatch"),
            Ok(t) => {
                self.batch = Some(BatchRecord {
                    batch_id: b"batch".to_vec(),
                    transfer: OURS,
                    sender: [0; 32],
                    chunk_size: CHUNK,
                    segment_count: t.count,
                    size: t.size,
                    sealed_metadata: Vec::new(),
                    chain: t.chain,
                    completed_unix: self.now,
                    receipt: Vec::new(),
                    compression: crate::wire::Compression::None,
                    content_digest: [0; 32],
                });
                Outcome::Receipt
            }
        };
        self.state.end_completion(outcome == Outcome::Receipt);
        outcome
    }

    fn reclaim(&mut self) {
        if self.state.expire(self.now) {
            self.stored.clear();
            self.reclaimed = true;
        }
    }

    /// Retrieval: the segments the batch counts, each checked for its place and
    /// opened, in order.
    fn retrieve(&self) -> Option<Vec<u8>> {
        let batch = self.batch.as_ref()?;
        let mut out = Vec::new();
        for i in 0..batch.segment_count {
            let (info, ct) = self.stored.get(&i).expect("a counted segment is stored");
            assert!(
                self.layout
                    .check_place(i, info.len as usize, batch.segment_count)
                    .is_ok()
            );
            let mut buf = ct.to_vec();
            let n = crypto::open_segment(&self.cipher, &OURS, i, &mut buf).expect("authentic");
            out.extend_from_slice(&buf[..n]);
        }
        Some(out)
    }
}

fn claim(b: &Batch, kind: Claim) -> Complete {
    let count = b.segments.len() as u64;
    let size = b.plaintext.len() as u64;
    let mut chain = b.chain;
    let (count, size) = match kind {
        Claim::Honest => (count, size),
        Claim::OneMore => (count + 1, size + 1),
        Claim::OneFewer => (count.saturating_sub(1), size.saturating_sub(1)),
        Claim::WrongChain => {
            chain.0[0] ^= 1;
            (count, size)
        }
    };
    Complete {
        transfer_id: OURS,
        segment_count: count,
        size,
        completion_id: [9; 32],
        chain,
        sealed_metadata: Bytes::new(),
        content_digest: [0; 32],
        replace: false,
        signature: Signature([0; 64]),
    }
}

fn op(max_index: u64) -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        6 => Just(SegmentKind::Honest),
        1 => Just(SegmentKind::Foreign),
        1 => Just(SegmentKind::Tampered),
    ];
    let claim = prop_oneof![
        3 => Just(Claim::Honest),
        1 => Just(Claim::OneMore),
        1 => Just(Claim::OneFewer),
        1 => Just(Claim::WrongChain),
    ];
    prop_oneof![
        8 => (0..=max_index, kind).prop_map(|(index, kind)| Op::Segment { index, kind }),
        1 => Just(Op::Resume),
        2 => claim.prop_map(Op::Complete),
        1 => (0u64..4).prop_map(Op::Wait),
        1 => Just(Op::Reclaim),
    ]
}

fn case() -> impl Strategy<Value = (usize, Vec<Op>)> {
    (0usize..5 * CHUNK as usize).prop_flat_map(|len| {
        let segments = len.div_ceil(CHUNK as usize) as u64;
        (
            Just(len),
            proptest::collection::vec(op(segments + 1), 0..40),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_interleaving_ends_in_the_original_bytes_or_a_named_refusal((len, ops) in case()) {
        let b = batch(len);
        let mut m = Model::new();
        for op in ops {
            let was = m.state.phase();
            match op {
                Op::Segment { index, kind } => {
                    let honest = b.segments.get(index as usize);
                    let ciphertext = match (kind, honest) {
                        // Past the end: a validly sealed chunk the batch never had.
                        (_, None) => seal(&m.cipher, &OURS, index, b"extra").0,
                        (SegmentKind::Honest, Some(ct)) => ct.clone(),
                        (SegmentKind::Foreign, Some(_)) => b.foreign[index as usize].clone(),
                        (SegmentKind::Tampered, Some(ct)) => {
                            let mut v = ct.to_vec();
                            v[0] ^= 1;
                            Bytes::from(v)
                        }
                    };
                    let outcome = m.segment(index, ciphertext);
                    if outcome == Outcome::Stored {
                        prop_assert_eq!(was, Phase::Open, "a segment lands only while open");
                        prop_assert!(m.now <= DEADLINE, "and before the deadline");
                    }
                    if !matches!(kind, SegmentKind::Honest) && index < b.segments.len() as u64 {
                        prop_assert_ne!(outcome, Outcome::Stored, "a forged segment is refused");
                    }
                }
                Op::Resume => {
                    let outcome = m.state.admit_resume(m.now);
                    if outcome.is_ok() {
                        prop_assert!(m.now <= DEADLINE && !m.reclaimed);
                    }
                }
                Op::Complete(kind) => {
                    let outcome = m.complete(&claim(&b, kind));
                    if outcome == Outcome::Receipt {
                        prop_assert!(matches!(kind, Claim::Honest), "only the honest claim");
                    }
                }
                Op::Wait(secs) => m.now += secs,
                Op::Reclaim => m.reclaim(),
            }
            // A completed batch always has the batch's layout.
            if let Some(batch) = &m.batch {
                prop_assert_eq!(batch.segment_count, b.segments.len() as u64);
                prop_assert_eq!(batch.size, b.plaintext.len() as u64);
                prop_assert!(batch.chain.matches(&b.chain));
                prop_assert_eq!(m.state.phase(), Phase::Complete);
            }
            prop_assert!(!(m.reclaimed && m.batch.is_some()), "a completed batch is never reclaimed");
        }
        if let Some(bytes) = m.retrieve() {
            prop_assert_eq!(bytes, b.plaintext);
        }
    }
}

/// The model itself, on the one interleaving everyone expects: it must reach the
/// outcomes the property relies on, or the property would test nothing.
#[test]
fn the_honest_order_completes_and_then_takes_nothing() {
    let b = batch(2 * CHUNK as usize + 100);
    let mut m = Model::new();
    for (i, ct) in b.segments.iter().enumerate() {
        assert_eq!(m.segment(i as u64, ct.clone()), Outcome::Stored);
    }
    assert_eq!(
        m.segment(1, b.segments[1].clone()),
        Outcome::Refused("duplicate")
    );
    assert_eq!(
        m.complete(&claim(&b, Claim::OneMore)),
        Outcome::Refused("wrong segment count")
    );
    assert_eq!(
        m.complete(&claim(&b, Claim::WrongChain)),
        Outcome::Refused("chain mismatch")
    );
    assert_eq!(m.complete(&claim(&b, Claim::Honest)), Outcome::Receipt);
    assert_eq!(
        m.complete(&claim(&b, Claim::Honest)),
        Outcome::Receipt,
        "a repeat"
    );
    assert_eq!(
        m.complete(&claim(&b, Claim::WrongChain)),
        Outcome::Refused("batch exists")
    );
    let extra = seal(&m.cipher, &OURS, 3, b"late").0;
    assert_eq!(m.segment(3, extra), Outcome::Refused("complete"));
    m.now = DEADLINE + 1;
    m.reclaim();
    assert!(!m.reclaimed, "a completed batch stays");
    assert_eq!(m.retrieve(), Some(b.plaintext));
}

#[test]
fn past_the_deadline_nothing_lands_and_the_reclaim_takes_it_all() {
    let b = batch(CHUNK as usize + 1);
    let mut m = Model::new();
    assert_eq!(m.segment(0, b.segments[0].clone()), Outcome::Stored);
    m.now = DEADLINE + 1;
    assert_eq!(
        m.segment(1, b.segments[1].clone()),
        Outcome::Refused("expired")
    );
    assert_eq!(
        m.complete(&claim(&b, Claim::Honest)),
        Outcome::Refused("expired")
    );
    m.reclaim();
    assert!(m.reclaimed && m.stored.is_empty());
    assert_eq!(m.retrieve(), None);
}
