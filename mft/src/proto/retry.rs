//! The one retry policy of every client operation: how many failures a sender or
//! a retriever survives, how long it waits before the next attempt, and when
//! progress renews the budget. Pure: the caller says what failed and how far it
//! got; the policy says whether to go on and after how long.

use std::time::Duration;

/// The first backoff; each retry doubles it, up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest backoff.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Exponential backoff before retry `attempt` (from 1): 200 ms, 400 ms, … 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempt.min(6))
        .min(MAX_BACKOFF)
}

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Wait `delay`, then make retry number `attempt` (from 1).
    Retry {
        /// Which retry this is.
        attempt: u32,
        /// How long to wait first.
        delay: Duration,
    },
    /// Stop: the failure is not retryable, or the budget is spent. `attempts`
    /// retries were made before it.
    GiveUp {
        /// Retries made.
        attempts: u32,
    },
}

/// The retries one operation (a whole send, a whole get) has made and may make.
///
/// A retry budget covers a run of failures without progress: a long transfer
/// that keeps moving survives any number of blips, one that is stuck stops after
/// `retries`. Progress is whatever the caller counts (segments acknowledged).
#[derive(Clone, Debug)]
pub(crate) struct Attempts {
    retries: u32,
    made: u32,
    progress_at_last_failure: u64,
}

impl Attempts {
    /// A fresh budget of `retries` retries.
    pub(crate) fn new(retries: u32) -> Self {
        Attempts {
            retries,
            made: 0,
            progress_at_last_failure: 0,
        }
    }

    /// Retries made since the budget was last renewed.
    #[cfg(test)]
    pub(crate) fn made(&self) -> u32 {
        self.made
    }

    /// A failure, `retryable` or not, after which the peer asked for `asked` (a busy
    /// server's retry-after), with `progress` made so far. Progress since the last
    /// failure renews the budget; the wait is what the peer asked, else backoff.
    pub(crate) fn failed(
        &mut self,
        retryable: bool,
        asked: Option<Duration>,
        progress: u64,
    ) -> Verdict {
        if progress > self.progress_at_last_failure {
            self.made = 0;
        }
        self.progress_at_last_failure = progress;
        if !retryable || self.made >= self.retries {
            return Verdict::GiveUp {
                attempts: self.made,
            };
        }
        self.made += 1;
        Verdict::Retry {
            attempt: self.made,
            delay: asked.unwrap_or_else(|| backoff(self.made)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(60), MAX_BACKOFF);
    }

    #[test]
    fn retries_stop_when_the_budget_is_spent() {
        let mut a = Attempts::new(2);
        assert!(matches!(
            a.failed(true, None, 0),
            Verdict::Retry { attempt: 1, .. }
        ));
        assert!(matches!(
            a.failed(true, None, 0),
            Verdict::Retry { attempt: 2, .. }
        ));
        assert_eq!(a.failed(true, None, 0), Verdict::GiveUp { attempts: 2 });
    }

    #[test]
    fn a_failure_that_cannot_be_retried_stops_at_once() {
        let mut a = Attempts::new(5);
        assert_eq!(a.failed(false, None, 0), Verdict::GiveUp { attempts: 0 });
    }

    #[test]
    fn the_wait_is_what_the_peer_asked_or_backoff() {
        let mut a = Attempts::new(5);
        let asked = Duration::from_millis(1500);
        assert_eq!(
            a.failed(true, Some(asked), 0),
            Verdict::Retry {
                attempt: 1,
                delay: asked
            }
        );
        assert_eq!(
            a.failed(true, None, 0),
            Verdict::Retry {
                attempt: 2,
                delay: backoff(2)
            }
        );
    }

    #[test]
    fn progress_renews_the_budget() {
        let mut a = Attempts::new(1);
        assert!(matches!(
            a.failed(true, None, 10),
            Verdict::Retry { attempt: 1, .. }
        ));
        // Stuck: the next failure without progress gives up.
        let mut stuck = a.clone();
        assert_eq!(
            stuck.failed(true, None, 10),
            Verdict::GiveUp { attempts: 1 }
        );
        // Moving: segments acknowledged since the last failure earn a new budget.
        assert!(matches!(
            a.failed(true, None, 11),
            Verdict::Retry { attempt: 1, .. }
        ));
        assert_eq!(a.made(), 1);
    }
}
