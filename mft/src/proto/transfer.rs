//! An open push transfer's state on the server, and the rules it decides.
//!
//! A transfer is **open** from its hello until a completion starts; then
//! **completing** while the server checks the stored segments against the claim;
//! then **complete** (the batch is stored, its receipt signed) or back to open if
//! the completion was refused. An open transfer past its deadline is **expired**:
//! it takes nothing more and is reclaimed. Segments are taken only while open and
//! before the deadline, so a segment can never land in a completed or reclaimed
//! transfer, whatever the timing of the tasks that carry it.

/// Where a transfer is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Taking segments.
    Open,
    /// A completion is being checked and stored; nothing else may change it.
    Completing,
    /// Its batch is stored. Final.
    Complete,
    /// Past its deadline: reclaimed or about to be. Final.
    Expired,
    /// Ended by the server before completion (its sender lost its access).
    /// Final.
    Aborted,
}

/// Why the state refused an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The deadline has passed.
    Expired,
    /// The server ended the transfer.
    Aborted,
    /// The batch is complete; nothing more may be added.
    Complete,
    /// A completion is in progress.
    Completing,
    /// The segment's index is at or past the server's limit.
    TooManySegments {
        /// The most segments a batch may have.
        max: u64,
    },
}

impl Refused {
    /// Text for the peer.
    pub(crate) fn message(self) -> String {
        match self {
            Refused::Expired => "the transfer expired".into(),
            Refused::Aborted => "the transfer was aborted".into(),
            Refused::Complete => {
                "the transfer is complete; its batch takes no more segments".into()
            }
            Refused::Completing => "the transfer is being completed".into(),
            Refused::TooManySegments { max } => {
                format!("a batch may have at most {max} segments")
            }
        }
    }
}

/// The chunk size of a new transfer: the sender's proposal, lowered to the
/// server's maximum. A proposal below the protocol's minimum is refused (the
/// error carries the minimum).
pub(crate) fn negotiate_chunk_size(proposed: u32, server_max: u32) -> Result<u32, u32> {
    if proposed < crate::wire::MIN_CHUNK_SIZE {
        return Err(crate::wire::MIN_CHUNK_SIZE);
    }
    Ok(proposed.min(server_max))
}

/// Whether a sender with `open` transfers open may open another, under `max`.
pub(crate) fn may_open_another(open: u64, max: usize) -> bool {
    open < max as u64
}

/// Which of a sender's open transfers to give up so that it may open another:
/// the one idle longest, if it has been idle at least `abandoned_after` seconds.
/// `candidates` are (transfer, unix time of its last activity). A key at its
/// limit of open transfers is so never locked out by sends it interrupted, while
/// a transfer still in use, or left only a short while ago, is kept for its resume.
pub(crate) fn abandoned<T: Copy>(
    candidates: impl IntoIterator<Item = (T, u64)>,
    now_unix: u64,
    abandoned_after: u64,
) -> Option<T> {
    candidates
        .into_iter()
        .filter(|&(_, active)| now_unix.saturating_sub(active) >= abandoned_after)
        .min_by_key(|&(_, active)| active)
        .map(|(transfer, _)| transfer)
}

/// An open transfer's state: its phase, its deadline and its limits.
#[derive(Clone, Debug)]
pub(crate) struct TransferState {
    phase: Phase,
    deadline_unix: u64,
    max_segments: u64,
}

impl TransferState {
    /// A transfer open until `deadline_unix`, taking at most `max_segments`.
    pub(crate) fn open(deadline_unix: u64, max_segments: u64) -> Self {
        TransferState {
            phase: Phase::Open,
            deadline_unix,
            max_segments,
        }
    }

    /// Its phase.
    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The phase as of `now`: an open transfer past its deadline is expired even
    /// before anything has reclaimed it.
    fn phase_at(&self, now_unix: u64) -> Phase {
        match self.phase {
            Phase::Open if now_unix > self.deadline_unix => Phase::Expired,
            phase => phase,
        }
    }

    fn refusal(phase: Phase) -> Option<Refused> {
        match phase {
            Phase::Open => None,
            Phase::Completing => Some(Refused::Completing),
            Phase::Complete => Some(Refused::Complete),
            Phase::Expired => Some(Refused::Expired),
            Phase::Aborted => Some(Refused::Aborted),
        }
    }

    /// Whether segment `index` may be stored now.
    pub(crate) fn admit_segment(&self, index: u64, now_unix: u64) -> Result<(), Refused> {
        if let Some(refused) = Self::refusal(self.phase_at(now_unix)) {
            return Err(refused);
        }
        if index >= self.max_segments {
            return Err(Refused::TooManySegments {
                max: self.max_segments,
            });
        }
        Ok(())
    }

    /// Whether the transfer may be opened again by its sender's hello (a resume).
    pub(crate) fn admit_resume(&self, now_unix: u64) -> Result<(), Refused> {
        match Self::refusal(self.phase_at(now_unix)) {
            // A resume while completing only learns what is stored.
            None | Some(Refused::Completing) => Ok(()),
            Some(refused) => Err(refused),
        }
    }

    /// Whether its sender's pause notice is taken now: only while the transfer is
    /// open (a completing, complete, expired or aborted one has nothing to pause).
    pub(crate) fn admit_pause(&self, now_unix: u64) -> Result<(), Refused> {
        Self::refusal(self.phase_at(now_unix)).map_or(Ok(()), Err)
    }

    /// Starts a completion: open → completing. Only one runs at a time, and only
    /// before the deadline.
    pub(crate) fn begin_completion(&mut self, now_unix: u64) -> Result<(), Refused> {
        if let Some(refused) = Self::refusal(self.phase_at(now_unix)) {
            return Err(refused);
        }
        self.phase = Phase::Completing;
        Ok(())
    }

    /// Ends a completion: completing → complete if its batch was stored, else back
    /// to open, so the sender can fix what was refused and complete again.
    pub(crate) fn end_completion(&mut self, stored: bool) {
        if self.phase == Phase::Completing {
            self.phase = if stored { Phase::Complete } else { Phase::Open };
        }
    }

    /// Ends an open transfer now, whatever its deadline, and says whether it may be
    /// deleted: true unless its batch is complete (a completion in progress is
    /// waited for by the caller, which holds the state exclusively).
    pub(crate) fn abort(&mut self) -> bool {
        match self.phase {
            Phase::Complete => false,
            _ => {
                self.phase = Phase::Aborted;
                true
            }
        }
    }

    /// Marks the transfer expired if it is open and past its deadline, and says
    /// whether it may be reclaimed now. A completing or complete transfer is never
    /// reclaimed: its data backs, or is about to back, a signed receipt.
    pub(crate) fn expire(&mut self, now_unix: u64) -> bool {
        match self.phase_at(now_unix) {
            Phase::Expired => {
                self.phase = Phase::Expired;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_transfer_idle_longest_is_abandoned_once_idle_long_enough() {
        let candidates = [(1, 100), (2, 40), (3, 70)];
        assert_eq!(super::abandoned(candidates, 100, 50), Some(2));
        // Idle 59 s at most: nothing is old enough at 60.
        assert_eq!(super::abandoned(candidates, 99, 60), None);
        assert_eq!(
            super::abandoned(std::iter::empty::<(u8, u64)>(), 100, 0),
            None
        );
        // A clock behind the activity counts as no idleness.
        assert_eq!(super::abandoned([(1, 200)], 100, 1), None);
    }
    use super::*;

    const DEADLINE: u64 = 1_000;

    fn open() -> TransferState {
        TransferState::open(DEADLINE, 8)
    }

    #[test]
    fn a_chunk_size_is_lowered_to_the_servers_maximum_and_never_below_the_minimum() {
        let min = crate::wire::MIN_CHUNK_SIZE;
        assert_eq!(negotiate_chunk_size(1 << 20, 4 << 20), Ok(1 << 20));
        assert_eq!(negotiate_chunk_size(16 << 20, 4 << 20), Ok(4 << 20));
        assert_eq!(negotiate_chunk_size(min, 4 << 20), Ok(min));
        assert_eq!(negotiate_chunk_size(min - 1, 4 << 20), Err(min));
    }

    #[test]
    fn a_sender_opens_transfers_up_to_its_limit() {
        assert!(may_open_another(15, 16));
        assert!(!may_open_another(16, 16));
        assert!(!may_open_another(0, 0));
    }

    #[test]
    fn an_open_transfer_takes_segments_up_to_its_limit() {
        let state = open();
        assert_eq!(state.admit_segment(0, 10), Ok(()));
        assert_eq!(state.admit_segment(7, 10), Ok(()));
        assert_eq!(
            state.admit_segment(8, 10),
            Err(Refused::TooManySegments { max: 8 })
        );
    }

    #[test]
    fn a_transfer_past_its_deadline_takes_nothing_even_before_it_is_reclaimed() {
        let mut state = open();
        assert_eq!(state.admit_segment(0, DEADLINE), Ok(()));
        assert_eq!(state.admit_segment(0, DEADLINE + 1), Err(Refused::Expired));
        assert_eq!(state.admit_resume(DEADLINE + 1), Err(Refused::Expired));
        assert_eq!(state.begin_completion(DEADLINE + 1), Err(Refused::Expired));
        assert_eq!(state.phase(), Phase::Open, "refusals change nothing");
    }

    #[test]
    fn a_completed_transfer_takes_no_more_segments() {
        let mut state = open();
        assert_eq!(state.admit_pause(10), Ok(()));
        state.begin_completion(10).unwrap();
        assert_eq!(state.admit_segment(3, 10), Err(Refused::Completing));
        assert_eq!(state.admit_pause(10), Err(Refused::Completing));
        assert_eq!(state.begin_completion(10), Err(Refused::Completing));
        state.end_completion(true);
        assert_eq!(state.phase(), Phase::Complete);
        assert_eq!(state.admit_segment(3, 10), Err(Refused::Complete));
        assert_eq!(state.begin_completion(10), Err(Refused::Complete));
        assert_eq!(state.admit_pause(10), Err(Refused::Complete));
        // Complete is final: the deadline no longer matters.
        assert_eq!(state.admit_segment(3, DEADLINE + 1), Err(Refused::Complete));
    }

    #[test]
    fn a_refused_completion_reopens_the_transfer() {
        let mut state = open();
        state.begin_completion(10).unwrap();
        state.end_completion(false);
        assert_eq!(state.phase(), Phase::Open);
        assert_eq!(state.admit_segment(3, 10), Ok(()));
    }

    #[test]
    fn an_aborted_transfer_takes_nothing_and_a_complete_one_is_not_aborted() {
        let mut state = open();
        assert!(state.abort());
        assert_eq!(state.admit_segment(0, 10), Err(Refused::Aborted));
        assert_eq!(state.admit_resume(10), Err(Refused::Aborted));
        assert_eq!(state.admit_pause(10), Err(Refused::Aborted));
        assert_eq!(state.begin_completion(10), Err(Refused::Aborted));
        let mut done = open();
        done.begin_completion(10).unwrap();
        done.end_completion(true);
        assert!(!done.abort(), "a complete batch stays");
        assert_eq!(done.phase(), Phase::Complete);
    }

    #[test]
    fn only_an_expired_open_transfer_is_reclaimed() {
        let mut state = open();
        assert!(!state.expire(DEADLINE), "not before its deadline");
        assert!(state.expire(DEADLINE + 1));
        assert_eq!(state.phase(), Phase::Expired);
        assert_eq!(state.admit_segment(0, 0), Err(Refused::Expired), "final");

        let mut completing = open();
        completing.begin_completion(10).unwrap();
        assert!(
            !completing.expire(DEADLINE + 1),
            "a completion in progress is kept"
        );
        completing.end_completion(true);
        assert!(!completing.expire(DEADLINE + 1), "a complete batch is kept");
    }
}
