//! Pausing, resuming, restarting and cancelling a sender's sends (or a
//! retriever's pulls) from outside them: one shared state that
//! [`Sender::pause`](super::Sender::pause) and its siblings change, and that
//! every send in progress watches.

use std::sync::Arc;

use tokio::sync::watch;

/// What the sender's owner asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct State {
    /// No new input is read while set.
    paused: bool,
    /// How many times cancel was asked: a send started before the latest ask is
    /// cancelled, one started after it is not.
    cancels: u64,
    /// How many times restart was asked.
    restarts: u64,
}

/// The owner's side, shared by a sender and its clones.
#[derive(Clone, Debug)]
pub(super) struct Control(Arc<watch::Sender<State>>);

impl Default for Control {
    fn default() -> Self {
        Control(Arc::new(watch::channel(State::default()).0))
    }
}

impl Control {
    /// Pauses; false if already paused.
    pub(super) fn pause(&self) -> bool {
        self.0
            .send_if_modified(|s| !std::mem::replace(&mut s.paused, true))
    }

    /// Ends a pause; false if not paused.
    pub(super) fn resume(&self) -> bool {
        self.0
            .send_if_modified(|s| std::mem::replace(&mut s.paused, false))
    }

    /// Cancels every send in progress.
    pub(super) fn cancel(&self) {
        self.0.send_modify(|s| s.cancels += 1);
    }

    /// Tells every send in progress that its connection is being restarted.
    pub(super) fn restart(&self) {
        self.0.send_modify(|s| s.restarts += 1);
    }

    /// Whether sends are paused.
    pub(super) fn is_paused(&self) -> bool {
        self.0.borrow().paused
    }

    /// What one send watches, from its start.
    pub(super) fn watch(&self) -> Watch {
        let rx = self.0.subscribe();
        let (cancels_at_start, restarts_seen) = {
            let state = rx.borrow();
            (state.cancels, state.restarts)
        };
        Watch {
            rx,
            cancels_at_start,
            restarts_at_start: restarts_seen,
            restarts_seen,
        }
    }
}

/// One send's view of the owner's asks.
#[derive(Clone, Debug)]
pub(super) struct Watch {
    rx: watch::Receiver<State>,
    cancels_at_start: u64,
    restarts_at_start: u64,
    /// Restarts asked for that this watch has reported.
    restarts_seen: u64,
}

impl Watch {
    /// Returns once the sends are not paused (at once if they are not), or once
    /// this send is cancelled.
    pub(super) async fn unpaused(&mut self) {
        let start = self.cancels_at_start;
        let _ = self.rx.wait_for(|s| !s.paused || s.cancels != start).await;
    }

    /// Whether a restart was asked for since this watch was made.
    pub(super) fn ever_restarted(&self) -> bool {
        self.rx.borrow().restarts != self.restarts_at_start
    }

    /// Whether a restart was asked for since this watch last said so.
    pub(super) fn take_restart(&mut self) -> bool {
        let restarts = self.rx.borrow().restarts;
        std::mem::replace(&mut self.restarts_seen, restarts) != restarts
    }

    /// Returns once a restart is asked for (one not reported yet), and reports
    /// it; never if the control is gone.
    pub(super) async fn restarted(&mut self) {
        let seen = self.restarts_seen;
        let waited = self
            .rx
            .wait_for(|s| s.restarts != seen)
            .await
            .map(|state| state.restarts);
        match waited {
            Ok(restarts) => self.restarts_seen = restarts,
            Err(_) => std::future::pending::<()>().await,
        }
    }

    /// Returns once this send is cancelled; never if the control is gone.
    pub(super) async fn cancelled(&mut self) {
        let start = self.cancels_at_start;
        if self.rx.wait_for(|s| s.cancels != start).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_pause_holds_until_resumed_or_cancelled() {
        let control = Control::default();
        let mut watch = control.watch();
        watch.unpaused().await; // not paused: at once
        assert!(control.pause());
        assert!(!control.pause(), "already paused");
        let held = tokio::time::timeout(Duration::from_millis(50), watch.unpaused()).await;
        assert!(held.is_err(), "a pause holds");
        assert!(control.resume());
        assert!(!control.resume(), "not paused");
        watch.unpaused().await;
        control.pause();
        control.cancel();
        watch.unpaused().await; // a cancelled send is not held
        watch.cancelled().await;
    }

    #[tokio::test]
    async fn a_restart_is_reported_once() {
        let control = Control::default();
        let mut watch = control.watch();
        assert!(!watch.take_restart());
        control.restart();
        let mut later = control.watch();
        assert!(watch.take_restart());
        assert!(!watch.take_restart(), "reported once");
        assert!(
            !later.take_restart(),
            "a watch starts after what it did not see"
        );
        control.restart();
        watch.restarted().await;
        assert!(!watch.take_restart(), "restarted() reports it too");
        let waited = tokio::time::timeout(Duration::from_millis(50), watch.restarted()).await;
        assert!(waited.is_err(), "no restart asked since");
    }

    #[tokio::test]
    async fn a_cancel_reaches_only_sends_started_before_it() {
        let control = Control::default();
        let mut before = control.watch();
        control.cancel();
        let mut after = control.watch();
        before.cancelled().await;
        let waited = tokio::time::timeout(Duration::from_millis(50), after.cancelled()).await;
        assert!(waited.is_err(), "a send started after the cancel runs on");
    }
}
