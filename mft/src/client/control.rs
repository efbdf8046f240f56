//! Pausing, resuming, restarting and cancelling a sender's sends (or a
//! retriever's pulls) from outside them: one shared state that
//! [`Sender::pause`](super::Sender::pause) and its siblings change, and that
//! every send in progress watches.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use super::Event;

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

/// The owner's side, shared by a sender (or retriever) and its clones, with the
/// events it reports what it was asked to.
#[derive(Clone, Debug)]
pub(super) struct Control {
    state: Arc<watch::Sender<State>>,
    events: broadcast::Sender<Event>,
}

impl Default for Control {
    fn default() -> Self {
        Control::new(broadcast::channel(1).0)
    }
}

impl Control {
    /// A control reporting to `events`.
    pub(super) fn new(events: broadcast::Sender<Event>) -> Self {
        Control {
            state: Arc::new(watch::channel(State::default()).0),
            events,
        }
    }

    /// Pauses, emitting [`Event::Paused`]; false if already paused.
    pub(super) fn pause(&self) -> bool {
        self.report(
            self.state
                .send_if_modified(|s| !std::mem::replace(&mut s.paused, true)),
            Event::Paused,
        )
    }

    /// Ends a pause, emitting [`Event::Continued`]; false if not paused.
    pub(super) fn resume(&self) -> bool {
        self.report(
            self.state
                .send_if_modified(|s| std::mem::replace(&mut s.paused, false)),
            Event::Continued,
        )
    }

    /// Emits `event` if `changed`; returns `changed`.
    fn report(&self, changed: bool, event: Event) -> bool {
        if changed {
            let _ = self.events.send(event);
        }
        changed
    }

    /// Cancels every send in progress.
    pub(super) fn cancel(&self) {
        self.state.send_modify(|s| s.cancels += 1);
    }

    /// Tells every send in progress that its connection is being restarted,
    /// emits [`Event::Reconnecting`], and closes `manager`'s dialed connections
    /// to the server `server_key`, so the next flow dials a new one.
    pub(super) fn restart(&self, manager: &flow::Manager, server_key: &flow::PeerKey) {
        self.ask_restart();
        for conn in manager.connections() {
            if conn.is_dialed() && conn.remote_identity() == *server_key {
                conn.close();
            }
        }
    }

    /// The restart itself: every watch hears of it, and the events say so.
    fn ask_restart(&self) {
        self.state.send_modify(|s| s.restarts += 1);
        let _ = self.events.send(Event::Reconnecting);
    }

    /// Whether sends are paused.
    pub(super) fn is_paused(&self) -> bool {
        self.state.borrow().paused
    }

    /// What one send watches, from its start.
    pub(super) fn watch(&self) -> Watch {
        let rx = self.state.subscribe();
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

    /// Returns whether the sends are paused once that is not `was` (at once if
    /// it is not already); `None` if the control is gone.
    pub(super) async fn paused_unlike(&mut self, was: bool) -> Option<bool> {
        let state = self.rx.wait_for(|s| s.paused != was).await.ok()?;
        Some(state.paused)
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
        assert_eq!(watch.paused_unlike(true).await, Some(false));
        control.pause();
        assert_eq!(watch.paused_unlike(false).await, Some(true));
        control.cancel();
        watch.unpaused().await; // a cancelled send is not held
        watch.cancelled().await;
    }

    #[tokio::test]
    async fn a_restart_is_reported_once() {
        let control = Control::default();
        let mut watch = control.watch();
        assert!(!watch.take_restart());
        control.ask_restart();
        let mut later = control.watch();
        assert!(watch.take_restart());
        assert!(!watch.take_restart(), "reported once");
        assert!(
            !later.take_restart(),
            "a watch starts after what it did not see"
        );
        control.ask_restart();
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
