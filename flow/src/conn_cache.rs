//! Managed connections and the cache that lets dials share them.
//!
//! After vanadium's `conncache`: connections are keyed by (protocol, address) and
//! checked against the caller's authorizer by peer key; one dial per key runs at a
//! time and the other callers wait for its result (a *reservation*); idle
//! connections are evicted.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::flow::Flow;
use crate::identity::{PeerAuthorizer, PeerKey};
use crate::registry::{CloseCode, Conn};

/// A connection owned by a [`Manager`](crate::Manager): the protocol's [`Conn`] plus
/// what the manager tracks about it. Cheap to clone.
#[derive(Clone)]
pub struct ManagedConn {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    conn: Arc<dyn Conn>,
    local: Endpoint,
    remote: Endpoint,
    remote_key: PeerKey,
    dialed: bool,
    max_msg_size: usize,
    created: Instant,
    /// Nanoseconds after `created` of the last flow opened, accepted or ended.
    last_used: AtomicU64,
    active_flows: AtomicUsize,
}

impl ManagedConn {
    pub(crate) fn new(
        conn: Arc<dyn Conn>,
        protocol: &str,
        dialed: bool,
        max_msg_size: usize,
    ) -> Self {
        // A protocol may report an address that does not pass endpoint validation
        // (a user protocol's own syntax); show it as it is rather than fail.
        let endpoint = |address: String| {
            Endpoint::new(protocol, &address)
                .unwrap_or_else(|_| Endpoint::unchecked(protocol, &address))
        };
        ManagedConn {
            inner: Arc::new(ConnInner {
                local: endpoint(conn.local_address()),
                remote: endpoint(conn.remote_address()),
                remote_key: conn.remote_key(),
                conn,
                dialed,
                max_msg_size,
                created: Instant::now(),
                last_used: AtomicU64::new(0),
                active_flows: AtomicUsize::new(0),
            }),
        }
    }

    /// Opens a new flow on this connection, whichever side dialed it: how a server
    /// opens a flow back to a client that dialed it.
    pub async fn open_flow(&self) -> Result<Flow> {
        let raw = self
            .inner
            .conn
            .open_flow()
            .await
            .map_err(|e| e.with_endpoint(&self.inner.remote))?;
        Ok(Flow::new(raw, self.clone(), self.inner.max_msg_size))
    }

    /// The protocol's connection.
    pub(crate) fn raw(&self) -> &Arc<dyn Conn> {
        &self.inner.conn
    }

    /// The protocol name this connection was made with.
    pub fn protocol(&self) -> &str {
        self.inner.remote.protocol()
    }

    /// Our end.
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.inner.local
    }

    /// The peer's end.
    pub fn remote_endpoint(&self) -> &Endpoint {
        &self.inner.remote
    }

    /// The peer's proven key.
    pub fn remote_identity(&self) -> PeerKey {
        self.inner.remote_key
    }

    /// Whether this side dialed the connection (rather than accepted it).
    pub fn is_dialed(&self) -> bool {
        self.inner.dialed
    }

    /// The smoothed round-trip time, when the protocol measures it.
    pub fn rtt(&self) -> Option<Duration> {
        self.inner.conn.rtt()
    }

    /// When a flow was last opened, accepted or ended on this connection.
    pub fn last_used(&self) -> Instant {
        self.inner.created + Duration::from_nanos(self.inner.last_used.load(Ordering::Relaxed))
    }

    /// How many flows are open on this connection.
    pub fn active_flows(&self) -> usize {
        self.inner.active_flows.load(Ordering::Relaxed)
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.conn.is_closed()
    }

    /// Resolves when the connection closes, with why.
    pub async fn closed(&self) -> Error {
        self.inner.conn.closed().await
    }

    /// Closes the connection; its flows fail on both sides.
    pub fn close(&self) {
        self.inner
            .conn
            .close(CloseCode::Closed, "closed by application");
    }

    pub(crate) fn close_with(&self, code: CloseCode, reason: &str) {
        self.inner.conn.close(code, reason);
    }

    fn touch(&self) {
        let nanos = self.inner.created.elapsed().as_nanos();
        self.inner
            .last_used
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn same(&self, other: &ManagedConn) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for ManagedConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedConn")
            .field("local", &self.inner.local)
            .field("remote", &self.inner.remote)
            .field("remote_key", &self.inner.remote_key)
            .field("active_flows", &self.active_flows())
            .finish()
    }
}

/// Counts a flow as open on its connection for as long as any half of it lives.
#[derive(Clone)]
pub(crate) struct FlowGuard(Arc<FlowGuardInner>);

struct FlowGuardInner(ManagedConn);

impl FlowGuard {
    pub(crate) fn new(conn: ManagedConn) -> Self {
        conn.inner.active_flows.fetch_add(1, Ordering::Relaxed);
        conn.touch();
        FlowGuard(Arc::new(FlowGuardInner(conn)))
    }

    pub(crate) fn conn(&self) -> &ManagedConn {
        &self.0.0
    }
}

impl Drop for FlowGuardInner {
    fn drop(&mut self) {
        self.0.touch();
        self.0.inner.active_flows.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The key connections are cached under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub(crate) protocol: String,
    pub(crate) address: String,
}

type DialOutcome = Option<Result<ManagedConn>>;

/// What a dial should do next, decided under the cache lock.
pub(crate) enum Lookup {
    /// A usable connection.
    Hit(ManagedConn),
    /// No connection: the caller holds the reservation and must dial, then call
    /// [`ConnCache::finish`].
    Dial(Reservation),
    /// Another dial for this key is under way: wait for it, then look again.
    Wait(watch::Receiver<DialOutcome>),
}

/// The right to dial one key; dropping it without finishing (a cancelled dial)
/// releases the key and wakes the waiters, who then look again.
pub(crate) struct Reservation {
    key: CacheKey,
    tx: watch::Sender<DialOutcome>,
    cache: Arc<ConnCache>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        if state
            .pending
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            state.pending.remove(&self.key);
        }
    }
}

#[derive(Default)]
struct CacheState {
    dialed: HashMap<CacheKey, Vec<ManagedConn>>,
    accepted: Vec<ManagedConn>,
    pending: HashMap<CacheKey, watch::Receiver<DialOutcome>>,
    closed: bool,
}

/// The set of a manager's connections, dialed and accepted.
#[derive(Default)]
pub(crate) struct ConnCache {
    state: Mutex<CacheState>,
}

impl ConnCache {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // A panic while holding this lock cannot leave the maps inconsistent (every
        // update is a single insert or remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds a healthy connection for `key` whose peer `authorizer` trusts, or
    /// decides who dials.
    pub(crate) fn lookup(
        self: &Arc<Self>,
        key: &CacheKey,
        authorizer: &dyn PeerAuthorizer,
        reserve: bool,
    ) -> Result<Option<Lookup>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::new(crate::error::Reason::ManagerClosed));
        }
        if let Some(conns) = state.dialed.get_mut(key) {
            conns.retain(|c| !c.is_closed());
            // The most recently used healthy connection: the likeliest to be alive.
            if let Some(conn) = conns
                .iter()
                .filter(|c| authorizer.is_authorized(&c.remote_identity()))
                .max_by_key(|c| c.last_used())
            {
                return Ok(Some(Lookup::Hit(conn.clone())));
            }
        }
        if !reserve {
            return Ok(None);
        }
        if let Some(rx) = state.pending.get(key) {
            return Ok(Some(Lookup::Wait(rx.clone())));
        }
        let (tx, rx) = watch::channel(None);
        state.pending.insert(key.clone(), rx);
        Ok(Some(Lookup::Dial(Reservation {
            key: key.clone(),
            tx,
            cache: self.clone(),
        })))
    }

    /// Ends a reservation: caches a new connection and tells the waiters.
    pub(crate) fn finish(&self, reservation: Reservation, mut outcome: Result<ManagedConn>) {
        let mut state = self.lock();
        state.pending.remove(&reservation.key);
        if state.closed {
            // The manager closed while this dial ran: do not keep what it made.
            if let Ok(conn) = &outcome {
                conn.close_with(CloseCode::Closed, "manager closed");
            }
            outcome = Err(Error::new(crate::error::Reason::ManagerClosed));
        }
        if let Ok(conn) = &outcome {
            state
                .dialed
                .entry(reservation.key.clone())
                .or_default()
                .push(conn.clone());
        }
        drop(state);
        reservation.tx.send_replace(Some(outcome));
    }

    /// Tracks a connection accepted by a listener.
    pub(crate) fn insert_accepted(&self, conn: ManagedConn) -> Result<()> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::new(crate::error::Reason::ManagerClosed));
        }
        state.accepted.retain(|c| !c.is_closed());
        state.accepted.push(conn);
        Ok(())
    }

    /// Forgets a connection (after it closed).
    pub(crate) fn remove(&self, conn: &ManagedConn) {
        let mut state = self.lock();
        for conns in state.dialed.values_mut() {
            conns.retain(|c| !c.same(conn));
        }
        state.dialed.retain(|_, conns| !conns.is_empty());
        state.accepted.retain(|c| !c.same(conn));
    }

    /// Closes and forgets every connection with no open flow that has been unused
    /// for at least `idle`. Returns how many were evicted.
    pub(crate) fn evict_idle(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let is_idle = |c: &ManagedConn| {
            c.active_flows() == 0 && now.saturating_duration_since(c.last_used()) >= idle
        };
        let mut victims = Vec::new();
        {
            let mut state = self.lock();
            for conns in state.dialed.values_mut() {
                conns.retain(|c| {
                    let evict = is_idle(c) || c.is_closed();
                    if evict {
                        victims.push(c.clone());
                    }
                    !evict
                });
            }
            state.dialed.retain(|_, conns| !conns.is_empty());
            state.accepted.retain(|c| {
                let evict = is_idle(c) || c.is_closed();
                if evict {
                    victims.push(c.clone());
                }
                !evict
            });
        }
        let count = victims.iter().filter(|c| !c.is_closed()).count();
        for conn in victims {
            if !conn.is_closed() {
                tracing::debug!(remote = %conn.remote_endpoint(), "evicting idle connection");
                conn.close_with(CloseCode::Idle, "idle");
            }
        }
        count
    }

    /// Closes every connection and refuses new ones.
    pub(crate) fn close_all(&self, reason: &str) {
        let conns: Vec<ManagedConn> = {
            let mut state = self.lock();
            state.closed = true;
            let mut all: Vec<ManagedConn> = state.dialed.drain().flat_map(|(_, v)| v).collect();
            all.append(&mut state.accepted);
            all
        };
        for conn in conns {
            conn.close_with(CloseCode::Closed, reason);
        }
    }

    /// Every live connection (for status and tests).
    pub(crate) fn connections(&self) -> Vec<ManagedConn> {
        let state = self.lock();
        state
            .dialed
            .values()
            .flatten()
            .chain(state.accepted.iter())
            .filter(|c| !c.is_closed())
            .cloned()
            .collect()
    }
}

/// Waits for another caller's dial of the same key. A failure that does not depend
/// on who asked (the network) is shared; a trust failure is not, since the waiter may
/// trust other keys, so the waiter looks again.
pub(crate) async fn wait_for(mut rx: watch::Receiver<DialOutcome>) -> Option<Result<ManagedConn>> {
    let outcome = match rx.wait_for(|o| o.is_some()).await {
        Ok(outcome) => outcome.clone(),
        // The dialer gave up without an outcome (it was cancelled): look again.
        Err(_) => return None,
    };
    match outcome {
        Some(Err(e)) if matches!(e.kind(), ErrorKind::NotTrusted | ErrorKind::Auth) => None,
        Some(Ok(_)) => None, // look again: the cache decides whether it is trusted
        other => other,
    }
}
