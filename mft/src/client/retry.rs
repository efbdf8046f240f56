//! Retrying client operations under the one policy of `proto::retry`: the sender's
//! handshake, resume, segment flows and completion, and the retriever's get, all
//! spend the same kind of budget and wait the same way.

use std::future::Future;
use std::time::Duration;

use tokio::sync::broadcast;

use super::Event;
use crate::error::{Error, Result};
use crate::proto::retry::{Attempts, Verdict};

/// The delay a failure asks for: a busy mft server's retry-after, or an HTTPS
/// 503/429 with Retry-After.
pub(super) fn asked_delay(error: &Error) -> Option<Duration> {
    match error {
        Error::Refused { retry_after, .. } => *retry_after,
        Error::Flow(e) => match e.reason() {
            flow::Reason::Busy(delay) => Some(*delay),
            _ => None,
        },
        _ => None,
    }
}

/// What the policy says about `error`, with `progress` made so far; reports a
/// retry to `events`.
pub(super) fn judge(
    attempts: &mut Attempts,
    error: &Error,
    progress: u64,
    events: Option<&broadcast::Sender<Event>>,
) -> Verdict {
    let verdict = attempts.failed(
        error.is_retryable_after(progress),
        asked_delay(error),
        progress,
    );
    if let (Verdict::Retry { attempt, delay }, Some(events)) = (verdict, events) {
        let _ = events.send(Event::Retrying {
            attempt,
            delay,
            error: error.to_string(),
        });
    }
    verdict
}

/// Runs `op`, retrying its retryable failures as the policy allows, waiting as it
/// says; `progress` is how far the operation this is part of has got. Reports
/// each retry to `events`.
pub(super) async fn retrying<T, F, Fut>(
    attempts: &mut Attempts,
    events: Option<&broadcast::Sender<Event>>,
    progress: u64,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    loop {
        let error = match op().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        match judge(attempts, &error, progress, events) {
            Verdict::Retry { delay, .. } => tokio::time::sleep(delay).await,
            Verdict::GiveUp { attempts } => return Err(exhausted(attempts, error)),
        }
    }
}

/// The error to report after `attempts` retries ended in `error`.
pub(super) fn exhausted(attempts: u32, error: Error) -> Error {
    if attempts == 0 || !(error.is_retryable() || error.is_refused()) {
        error
    } else {
        Error::RetriesExhausted {
            attempts: attempts + 1,
            last: Box::new(error),
        }
    }
}
