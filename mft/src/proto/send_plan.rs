//! The sender's plan, as a value: which segments still have to go out, which the
//! server has stored, and when the batch may be completed. The segment flows and
//! the producer are the I/O around it; every decision about a segment's fate is a
//! call here, so a segment is counted once however many times it was sent,
//! acknowledged or reported stored.

use crate::wire::Stored;

/// What a send knows about its segments.
#[derive(Clone, Debug, Default)]
pub(crate) struct SendPlan {
    /// Segments the server held when the transfer (re)opened: not sent again.
    held_at_open: Stored,
    /// One bit per segment index: stored by the server (acknowledged, or reported
    /// held), as far as the sender knows.
    stored: Vec<u64>,
    /// How many bits are set.
    stored_count: u64,
}

/// Why a send cannot complete yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unfinished {
    /// Segments the input made.
    pub(crate) produced: u64,
    /// Of those, how many the server has stored.
    pub(crate) stored: u64,
}

impl SendPlan {
    /// The plan of a transfer the server opened holding `held` segments.
    pub(crate) fn new(held: Stored) -> Self {
        SendPlan {
            held_at_open: held,
            ..SendPlan::default()
        }
    }

    fn bit(index: u64) -> (usize, u64) {
        ((index / 64) as usize, 1 << (index % 64))
    }

    fn is_stored(&self, index: u64) -> bool {
        let (word, bit) = Self::bit(index);
        self.stored.get(word).is_some_and(|w| w & bit != 0)
    }

    /// Whether segment `index` has to be sent: the server did not hold it when the
    /// transfer opened, and has not stored it since.
    pub(crate) fn must_send(&self, index: u64) -> bool {
        !self.held_at_open.contains(index) && !self.is_stored(index)
    }

    /// Records that the server holds segment `index` (its acknowledgement came, or
    /// the server reported it held); true the first time, so each segment counts
    /// once towards progress.
    pub(crate) fn mark_stored(&mut self, index: u64) -> bool {
        let (word, bit) = Self::bit(index);
        if self.stored.len() <= word {
            self.stored.resize(word + 1, 0);
        }
        let new = self.stored[word] & bit == 0;
        self.stored[word] |= bit;
        self.stored_count += u64::from(new);
        new
    }

    /// Segments stored so far (each counted once).
    pub(crate) fn stored_count(&self) -> u64 {
        self.stored_count
    }

    /// Whether the batch may be completed once the input made `produced`
    /// segments: every one of `0..produced` is stored, and nothing else.
    pub(crate) fn ready_to_complete(&self, produced: u64) -> Result<(), Unfinished> {
        let all = (0..produced).all(|i| self.is_stored(i));
        if all && self.stored_count == produced {
            Ok(())
        } else {
            Err(Unfinished {
                produced,
                stored: self.stored_count,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_transfer_sends_everything_once() {
        let mut plan = SendPlan::new(Stored::default());
        assert!(plan.must_send(0) && plan.must_send(200));
        assert!(plan.mark_stored(0));
        assert!(!plan.must_send(0));
        assert!(
            !plan.mark_stored(0),
            "a second acknowledgement counts nothing"
        );
        assert_eq!(plan.stored_count(), 1);
    }

    #[test]
    fn segments_held_at_open_are_not_sent_again() {
        let plan = SendPlan::new(Stored::from_indices([0, 1, 2, 7]));
        assert!(!plan.must_send(1) && !plan.must_send(7));
        assert!(plan.must_send(3));
    }

    #[test]
    fn completion_waits_for_every_segment_and_nothing_more() {
        let mut plan = SendPlan::new(Stored::default());
        for i in [2, 0] {
            plan.mark_stored(i);
        }
        assert_eq!(
            plan.ready_to_complete(3),
            Err(Unfinished {
                produced: 3,
                stored: 2
            })
        );
        plan.mark_stored(1);
        assert_eq!(plan.ready_to_complete(3), Ok(()));
        assert_eq!(
            plan.ready_to_complete(0),
            Err(Unfinished {
                produced: 0,
                stored: 3
            })
        );
        plan.mark_stored(3);
        assert!(plan.ready_to_complete(3).is_err(), "a segment past the end");
        assert_eq!(SendPlan::default().ready_to_complete(0), Ok(()));
    }
}
