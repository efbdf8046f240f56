//! The manager: listens, dials, caches connections and hands out flows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::conn_cache::{CacheKey, ConnCache, Lookup, ManagedConn, wait_for};
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind, Reason, Result};
use crate::flow::{DEFAULT_MAX_MSG_SIZE, Flow};
use crate::identity::{self, Authorizer, Identity, PeerAuthorizer};
use crate::registry::{
    CloseCode, Conn, DialContext, ListenContext, Listener, Properties, Protocol, Registry,
};
use crate::select::Selection;

/// Settings of a [`Manager`], with safe defaults.
///
/// ```
/// use std::time::Duration;
/// let mut config = flow::ManagerConfig::default();
/// config.idle_timeout(Duration::from_secs(30)).max_msg_size(1 << 20);
/// ```
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    idle_timeout: Duration,
    accept_authorizer: Arc<dyn PeerAuthorizer>,
    max_msg_size: usize,
    accept_backlog: usize,
    happy_eyeballs_delay: Duration,
    udp_blocked_ttl: Duration,
    probe_after_refusal: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            idle_timeout: Duration::from_secs(60),
            accept_authorizer: Authorizer::any(),
            max_msg_size: DEFAULT_MAX_MSG_SIZE,
            accept_backlog: 256,
            happy_eyeballs_delay: Duration::from_millis(300),
            udp_blocked_ttl: Duration::from_secs(600),
            probe_after_refusal: Duration::from_secs(1),
        }
    }
}

impl ManagerConfig {
    /// How long a connection with no open flow is kept before it is closed
    /// (default 60 s).
    pub fn idle_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.idle_timeout = timeout;
        self
    }

    /// Which peers may connect to our listeners (default: any peer that proves a key).
    pub fn accept_authorizer(&mut self, authorizer: Arc<dyn PeerAuthorizer>) -> &mut Self {
        self.accept_authorizer = authorizer;
        self
    }

    /// The largest message a new flow's `read_msg` accepts (default 32 MiB).
    pub fn max_msg_size(&mut self, max: usize) -> &mut Self {
        self.max_msg_size = max;
        self
    }

    /// How many incoming flows may wait for [`Manager::accept`] before the manager
    /// stops taking new ones from the network (default 256).
    pub fn accept_backlog(&mut self, backlog: usize) -> &mut Self {
        self.accept_backlog = backlog.max(1);
        self
    }

    /// For `mftq://` endpoints: how long QUIC gets before HTTPS is tried beside it
    /// (default 300 ms).
    pub fn happy_eyeballs_delay(&mut self, delay: Duration) -> &mut Self {
        self.happy_eyeballs_delay = delay;
        self
    }

    /// For `mftq://` endpoints: how long a destination where HTTPS won the race is
    /// dialed with HTTPS straight away, without trying UDP (default 10 minutes).
    pub fn udp_blocked_ttl(&mut self, ttl: Duration) -> &mut Self {
        self.udp_blocked_ttl = ttl;
        self
    }

    /// For `mftq://` endpoints: how long a UDP candidate (QUIC) that has not
    /// answered yet still gets once a TCP candidate was refused (default 1 s).
    /// A refused TCP connection says nothing listens there; a UDP port that is
    /// closed usually says nothing at all, so without this a dial to a server
    /// that is down waits out the whole dial timeout. After it the dial fails
    /// with [`ErrorKind::Refused`](crate::ErrorKind::Refused), naming both. A
    /// server that listens on QUIC alone, over a path with a round trip longer
    /// than this, needs it raised.
    pub fn probe_after_refusal(&mut self, probe: Duration) -> &mut Self {
        self.probe_after_refusal = probe;
        self
    }
}

/// What the manager is doing: where it listens and what went wrong.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// The endpoints being listened on, with real ports.
    pub endpoints: Vec<Endpoint>,
    /// Listeners that failed, with why.
    pub listen_errors: Vec<(Endpoint, Error)>,
    /// Whether [`Manager::close`] was called.
    pub closed: bool,
}

/// Resolves when one listener stops, with why; returned by [`Manager::listen`].
#[derive(Debug)]
pub struct ListenHandle {
    endpoint: Endpoint,
    done: watch::Receiver<Option<Error>>,
}

impl ListenHandle {
    /// The endpoint this listener serves, with the real port.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Waits until the listener stops: [`Reason::NotListening`] after
    /// [`Manager::stop_listening`], [`Reason::ManagerClosed`] after close, or the
    /// listener's own failure.
    pub async fn stopped(&mut self) -> Error {
        match self.done.wait_for(|d| d.is_some()).await {
            Ok(done) => done
                .clone()
                .unwrap_or_else(|| Error::new(Reason::NotListening)),
            Err(_) => Error::new(Reason::ManagerClosed),
        }
    }
}

/// Listens and dials on registered protocols, and multiplexes flows over one cached,
/// mutually authenticated connection per peer.
///
/// A cheap handle: clones share one manager, and dropping the last one closes it.
/// Must be created inside a tokio runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> flow::Result<()> {
/// use std::time::Duration;
/// use flow::{Authorizer, Identity, Manager, ManagerConfig, Registry};
/// let server = Manager::new(Identity::generate(), Registry::default(), ManagerConfig::default())?;
/// let endpoint = server.listen("quic", "127.0.0.1:0").await?.endpoint().clone();
/// let client = Manager::new(Identity::generate(), Registry::default(), ManagerConfig::default())?;
/// let pinned = Authorizer::pinned(server.identity().public_key());
/// let mut flow = client.dial(&endpoint, pinned, Duration::from_secs(5)).await?;
/// flow.write_msg(&[b"ping"]).await?;
/// let mut incoming = server.accept().await?;
/// assert_eq!(incoming.read_msg().await?.as_deref(), Some(&b"ping"[..]));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Manager {
    handle: Arc<Handle>,
}

/// Closes the manager when the last [`Manager`] clone is dropped; background tasks
/// hold [`Shared`] instead, so they do not keep it open.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

struct Shared {
    identity: Identity,
    registry: Registry,
    config: ManagerConfig,
    cache: Arc<ConnCache>,
    accept_tx: mpsc::Sender<Flow>,
    accept_rx: tokio::sync::Mutex<mpsc::Receiver<Flow>>,
    listeners: Mutex<Vec<ListenerEntry>>,
    next_listener: AtomicU64,
    status: watch::Sender<Status>,
    closed: CancellationToken,
    /// `mftq://` destinations where UDP seemed blocked, until when.
    udp_blocked: Mutex<HashMap<String, Instant>>,
}

struct ListenerEntry {
    id: u64,
    listener: Arc<dyn Listener>,
    done: watch::Sender<Option<Error>>,
}

impl Manager {
    /// A manager acting as `identity`, using the protocols of `registry`.
    ///
    /// Fails with [`ErrorKind::BadState`] outside a tokio runtime.
    pub fn new(identity: Identity, registry: Registry, config: ManagerConfig) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(Reason::BadConfig(
                "a Manager must be created inside a tokio runtime".into(),
            ))
        })?;
        let (accept_tx, accept_rx) = mpsc::channel(config.accept_backlog);
        let shared = Arc::new(Shared {
            identity,
            registry,
            config,
            cache: Arc::new(ConnCache::default()),
            accept_tx,
            accept_rx: tokio::sync::Mutex::new(accept_rx),
            listeners: Mutex::new(Vec::new()),
            next_listener: AtomicU64::new(0),
            status: watch::channel(Status::default()).0,
            closed: CancellationToken::new(),
            udp_blocked: Mutex::new(HashMap::new()),
        });
        runtime.spawn(evict_idle_connections(shared.clone()));
        Ok(Manager {
            handle: Arc::new(Handle { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Our identity.
    pub fn identity(&self) -> &Identity {
        &self.shared().identity
    }

    /// The protocols this manager uses.
    pub fn registry(&self) -> &Registry {
        &self.shared().registry
    }

    /// Starts listening with `protocol` on `address` (port 0 picks a free port; see
    /// [`ListenHandle::endpoint`] or [`Manager::status`] for the real one). May be
    /// called many times.
    pub async fn listen(&self, protocol: &str, address: &str) -> Result<ListenHandle> {
        let shared = self.shared();
        if shared.closed.is_cancelled() {
            return Err(Error::new(Reason::ManagerClosed));
        }
        let requested = Endpoint::new(protocol, address)?;
        let (name, proto) = shared
            .registry
            .lookup(protocol)
            .map_err(|e| e.with_endpoint(&requested))?;
        let ctx = ListenContext::new(
            shared.identity.clone(),
            shared.config.accept_authorizer.clone(),
        );
        let listener: Arc<dyn Listener> = Arc::from(
            proto
                .listen(&ctx, &name, address)
                .await
                .map_err(|e| e.with_endpoint(&requested))?,
        );
        let endpoint = Endpoint::new(&name, &listener.local_address())
            .unwrap_or_else(|_| Endpoint::unchecked(&name, &listener.local_address()));
        let id = shared.next_listener.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = watch::channel(None);
        shared.lock_listeners().push(ListenerEntry {
            id,
            listener: listener.clone(),
            done: done_tx,
        });
        shared
            .status
            .send_modify(|s| s.endpoints.push(endpoint.clone()));
        tracing::info!(%endpoint, "listening");
        tokio::spawn(accept_connections(
            shared.clone(),
            id,
            name,
            endpoint.clone(),
            listener,
        ));
        // A close that raced with this listen must not leave the listener running.
        if shared.closed.is_cancelled() {
            shared.stop_listeners(Reason::ManagerClosed);
        }
        Ok(ListenHandle {
            endpoint,
            done: done_rx,
        })
    }

    /// Stops every listener. Connections already made stay open.
    pub fn stop_listening(&self) {
        self.shared().stop_listeners(Reason::NotListening);
    }

    /// A snapshot of what the manager is doing.
    pub fn status(&self) -> Status {
        self.shared().status.borrow().clone()
    }

    /// A watch on [`Manager::status`]: `changed().await` on it fires on every change.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.shared().status.subscribe()
    }

    /// The next flow a peer opened, over a listener's connection or one this manager
    /// dialed. Fails with [`ErrorKind::BadState`] once the manager is closed.
    pub async fn accept(&self) -> Result<Flow> {
        let shared = self.shared();
        let mut rx = tokio::select! {
            rx = shared.accept_rx.lock() => rx,
            _ = shared.closed.cancelled() => return Err(Error::new(Reason::ManagerClosed)),
        };
        tokio::select! {
            flow = rx.recv() => flow.ok_or_else(|| Error::new(Reason::ManagerClosed)),
            _ = shared.closed.cancelled() => Err(Error::new(Reason::ManagerClosed)),
        }
    }

    /// Opens a flow to `endpoint`, reusing a cached connection to a peer `authorizer`
    /// trusts or dialing a new one. The whole call is bounded by `timeout`.
    ///
    /// An `mftq://host:port` endpoint names no protocol: it is dialed by preference
    /// (see [`Manager::dial_with`]).
    pub async fn dial(
        &self,
        endpoint: &Endpoint,
        authorizer: Arc<dyn PeerAuthorizer>,
        timeout: Duration,
    ) -> Result<Flow> {
        self.dial_with(endpoint, authorizer, timeout, &Selection::default())
            .await
    }

    /// Like [`Manager::dial`], choosing protocols by their properties.
    ///
    /// For `mftq://host:port` (after TAPS): the built-in `quic` and `https` that
    /// `selection` admits are ranked by it (QUIC first by default); the first is
    /// dialed, the second is started beside it after
    /// [`ManagerConfig::happy_eyeballs_delay`] or as soon as the first fails, the
    /// first to connect wins and the other is abandoned. When HTTPS wins, the
    /// destination is remembered as blocking UDP and dialed with HTTPS straight away
    /// for [`ManagerConfig::udp_blocked_ttl`]. A cached connection to the
    /// destination over any admitted protocol is used first. For an endpoint that
    /// names its protocol, `selection` only checks that the protocol is admitted.
    pub async fn dial_with(
        &self,
        endpoint: &Endpoint,
        authorizer: Arc<dyn PeerAuthorizer>,
        timeout: Duration,
        selection: &Selection,
    ) -> Result<Flow> {
        let shared = self.shared();
        let work = async {
            let conn = if endpoint.protocol() == crate::select::PREFERENCE_SCHEME {
                shared
                    .connection_by_preference(endpoint, authorizer, timeout, selection)
                    .await?
            } else {
                let (_, protocol) = shared.cache_key(endpoint)?;
                if !selection.admits(&protocol.properties()) {
                    return Err(Error::new(Reason::Protocol(
                        ErrorKind::BadArg,
                        format!(
                            "protocol {:?} is excluded by the selection",
                            endpoint.protocol()
                        ),
                    )));
                }
                shared.connection_for(endpoint, authorizer, timeout).await?
            };
            conn.open_flow().await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result.map_err(|e| fill_endpoint(e, endpoint)),
            Err(_) => Err(Error::new(Reason::Timeout(timeout)).with_endpoint(endpoint)),
        }
    }

    /// Opens a flow over a cached connection to `endpoint` only; fails with
    /// [`Reason::NotCached`] rather than dialing.
    pub async fn dial_cached(
        &self,
        endpoint: &Endpoint,
        authorizer: Arc<dyn PeerAuthorizer>,
    ) -> Result<Flow> {
        let shared = self.shared();
        let candidates = if endpoint.protocol() == crate::select::PREFERENCE_SCHEME {
            shared
                .preference_candidates(endpoint.address(), &Selection::default())?
                .into_iter()
                .map(|(candidate, _)| candidate)
                .collect()
        } else {
            vec![endpoint.clone()]
        };
        if let Some(conn) = shared
            .cached_among(&candidates, authorizer.as_ref())
            .map_err(|e| e.with_endpoint(endpoint))?
        {
            return conn.open_flow().await;
        }
        Err(Error::new(Reason::NotCached).with_endpoint(endpoint))
    }

    /// The live connections, dialed and accepted.
    pub fn connections(&self) -> Vec<ManagedConn> {
        self.shared().cache.connections()
    }

    /// Closes every listener and connection; open flows fail on both sides, and
    /// [`Manager::accept`] and [`Manager::dial`] fail from now on.
    pub fn close(&self) {
        self.shared().close();
    }

    /// Resolves once the manager is closed.
    pub async fn closed(&self) {
        self.shared().closed.cancelled().await;
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("identity", &self.identity().public_key())
            .field("registry", self.registry())
            .finish_non_exhaustive()
    }
}

/// Failures that say the peer is not who we want: no other protocol will change that.
fn is_trust_error(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Auth | ErrorKind::NotTrusted)
}

fn fill_endpoint(err: Error, endpoint: &Endpoint) -> Error {
    if err.endpoint().is_some() {
        err
    } else {
        err.with_endpoint(endpoint)
    }
}

impl Shared {
    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, Vec<ListenerEntry>> {
        // Entries are pushed and drained whole, so a poisoned lock holds valid data.
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cache_key(&self, endpoint: &Endpoint) -> Result<(CacheKey, Arc<dyn Protocol>)> {
        let (name, protocol) = self
            .registry
            .lookup(endpoint.protocol())
            .map_err(|e| e.with_endpoint(endpoint))?;
        Ok((
            CacheKey {
                protocol: name,
                address: endpoint.address().to_string(),
            },
            protocol,
        ))
    }

    async fn connection_for(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        authorizer: Arc<dyn PeerAuthorizer>,
        timeout: Duration,
    ) -> Result<ManagedConn> {
        let (key, protocol) = self.cache_key(endpoint)?;
        loop {
            let lookup = self.cache.lookup(&key, authorizer.as_ref(), true)?;
            match lookup {
                Some(Lookup::Hit(conn)) => return Ok(conn),
                Some(Lookup::Wait(rx)) => {
                    if let Some(outcome) = wait_for(rx).await {
                        return outcome;
                    }
                }
                Some(Lookup::Dial(reservation)) => {
                    let outcome = self
                        .dial_new(&key, protocol.as_ref(), authorizer.clone(), timeout)
                        .await
                        .map_err(|e| fill_endpoint(e, endpoint));
                    self.cache.finish(reservation, outcome.clone());
                    return outcome;
                }
                None => return Err(Error::new(Reason::NotCached)),
            }
        }
    }

    async fn connection_by_preference(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        authorizer: Arc<dyn PeerAuthorizer>,
        timeout: Duration,
        selection: &Selection,
    ) -> Result<ManagedConn> {
        let address = endpoint.address();
        let mut candidates: Vec<(Endpoint, bool)> = self
            .preference_candidates(address, selection)?
            .into_iter()
            .map(|(candidate, properties)| (candidate, properties.is_udp()))
            .collect();
        if candidates.is_empty() {
            return Err(Error::new(Reason::Protocol(
                ErrorKind::BadArg,
                "no registered protocol satisfies the selection".into(),
            )));
        }
        // A connection we already have to this destination wins outright.
        let endpoints: Vec<Endpoint> = candidates.iter().map(|(e, _)| e.clone()).collect();
        if let Some(conn) = self.cached_among(&endpoints, authorizer.as_ref())? {
            return Ok(conn);
        }
        if self.udp_seems_blocked(address) && candidates.iter().any(|(_, udp)| !udp) {
            candidates.retain(|(_, udp)| !udp);
        }
        let mut candidates = candidates.into_iter();
        let Some((first, first_udp)) = candidates.next() else {
            return Err(Error::new(Reason::NotCached));
        };
        let Some((second, second_udp)) = candidates.next() else {
            return self.connection_for(&first, authorizer, timeout).await;
        };
        let first_failed = tokio::sync::Notify::new();
        let delay = self.config.happy_eyeballs_delay;
        let first_dial = async {
            let outcome = self
                .connection_for(&first, authorizer.clone(), timeout)
                .await;
            if outcome.is_err() {
                first_failed.notify_one();
            }
            outcome
        };
        let second_dial = async {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = first_failed.notified() => {}
            }
            tracing::debug!(%second, "starting the second candidate");
            self.connection_for(&second, authorizer.clone(), timeout)
                .await
        };
        tokio::pin!(first_dial, second_dial);
        let (mut first_error, mut second_error): (Option<Error>, Option<Error>) = (None, None);
        // Armed once a TCP candidate is refused while a UDP one has not answered.
        let probe = tokio::time::sleep(self.config.probe_after_refusal);
        tokio::pin!(probe);
        let mut probing = false;
        loop {
            tokio::select! {
                () = &mut probe, if probing => {
                    // Armed only with the TCP candidate conclusive and the UDP one silent.
                    let (tcp, tcp_error, silent) = if first_udp {
                        (&second, &second_error, &first)
                    } else {
                        (&first, &first_error, &second)
                    };
                    let probe = self.config.probe_after_refusal;
                    return Err(Error::new(match tcp_error.as_ref().map(|e| e.reason()) {
                        Some(Reason::NotMftq(why)) => Reason::NotMftq(format!(
                            "{tcp}: {why}; {silent} gave no answer within {probe:?}"
                        )),
                        _ => Reason::Refused(format!(
                            "{tcp} refused the connection, and {silent} gave no answer within {probe:?}"
                        )),
                    }));
                },
                outcome = &mut first_dial, if first_error.is_none() => match outcome {
                    Ok(conn) => return Ok(conn),
                    Err(e) if is_trust_error(&e) => return Err(e),
                    Err(e) => first_error = Some(e),
                },
                outcome = &mut second_dial, if second_error.is_none() => match outcome {
                    Ok(conn) => {
                        if first_udp && !second_udp {
                            tracing::info!(%address, "HTTPS won the race; remembering UDP as blocked");
                            self.remember_udp_blocked(address);
                        }
                        return Ok(conn);
                    }
                    Err(e) if is_trust_error(&e) => return Err(e),
                    Err(e) => second_error = Some(e),
                },
            }
            let refused =
                |e: &Option<Error>| e.as_ref().is_some_and(|e| e.kind() == ErrorKind::Refused);
            // What no wait for the other candidate would change.
            let conclusive = |e: &Option<Error>| {
                e.as_ref()
                    .is_some_and(|e| matches!(e.kind(), ErrorKind::Refused | ErrorKind::NotMftq))
            };
            match (&first_error, &second_error) {
                (Some(a), Some(b)) => {
                    let detail = format!("{first}: {a}; {second}: {b}");
                    return Err(Error::new(
                        if refused(&first_error) && refused(&second_error) {
                            Reason::Refused(detail)
                        } else {
                            Reason::ConnectFailed(detail)
                        },
                    ));
                }
                // TCP refused while UDP is still silent: give UDP the probe.
                (None, Some(_))
                    if !probing && first_udp && !second_udp && conclusive(&second_error) =>
                {
                    probing = true;
                    probe
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.config.probe_after_refusal);
                }
                (Some(_), None)
                    if !probing && second_udp && !first_udp && conclusive(&first_error) =>
                {
                    probing = true;
                    probe
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.config.probe_after_refusal);
                }
                _ => {}
            }
        }
    }

    /// The protocols an `mftq://` address may be dialed by under `selection`, best
    /// first, with their properties.
    fn preference_candidates(
        &self,
        address: &str,
        selection: &Selection,
    ) -> Result<Vec<(Endpoint, Properties)>> {
        let mut candidates = Vec::new();
        for name in crate::select::PREFERENCE_PROTOCOLS {
            let Some(protocol) = self.registry.get(name) else {
                continue;
            };
            let properties = protocol.properties();
            if selection.admits(&properties) {
                candidates.push((Endpoint::new(name, address)?, properties));
            }
        }
        selection.rank(&mut candidates, |(_, properties)| *properties);
        Ok(candidates)
    }

    /// The first of `candidates` with a usable cached connection to a trusted peer.
    fn cached_among(
        &self,
        candidates: &[Endpoint],
        authorizer: &dyn PeerAuthorizer,
    ) -> Result<Option<ManagedConn>> {
        for candidate in candidates {
            let (key, _) = self.cache_key(candidate)?;
            if let Some(Lookup::Hit(conn)) = self.cache.lookup(&key, authorizer, false)? {
                return Ok(Some(conn));
            }
        }
        Ok(None)
    }

    fn udp_seems_blocked(&self, address: &str) -> bool {
        let mut blocked = self.udp_blocked.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        blocked.retain(|_, until| *until > now);
        blocked.contains_key(address)
    }

    fn remember_udp_blocked(&self, address: &str) {
        let until = Instant::now() + self.config.udp_blocked_ttl;
        self.udp_blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.to_string(), until);
    }

    async fn dial_new(
        self: &Arc<Self>,
        key: &CacheKey,
        protocol: &dyn Protocol,
        authorizer: Arc<dyn PeerAuthorizer>,
        timeout: Duration,
    ) -> Result<ManagedConn> {
        let ctx = DialContext::new(self.identity.clone(), authorizer.clone());
        let (name, addresses) = protocol.resolve(&key.protocol, &key.address).await?;
        let mut last_error = Error::new(Reason::Resolve("no addresses found".into()));
        let mut conn = None;
        for address in &addresses {
            match protocol.dial(&ctx, &name, address, timeout).await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(e) if matches!(e.kind(), ErrorKind::Auth | ErrorKind::NotTrusted) => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::debug!(%address, error = %e, "dial attempt failed");
                    last_error = e;
                }
            }
        }
        let conn: Arc<dyn Conn> = conn.ok_or(last_error)?;
        // Protocols check trust during their handshake; checking again here keeps a
        // user protocol that forgot from handing us an untrusted peer.
        if let Err(e) = identity::authorize(authorizer.as_ref(), conn.remote_key()) {
            conn.close(CloseCode::NotTrusted, "not trusted");
            return Err(e);
        }
        let managed = ManagedConn::new(conn, &key.protocol, true, self.config.max_msg_size);
        tracing::debug!(remote = %managed.remote_endpoint(), peer = %managed.remote_identity(), "dialed");
        tokio::spawn(accept_flows(self.clone(), managed.clone()));
        Ok(managed)
    }

    fn stop_listeners(&self, reason: Reason) {
        let entries: Vec<ListenerEntry> = self.lock_listeners().drain(..).collect();
        if entries.is_empty() {
            return;
        }
        for entry in &entries {
            entry.listener.close();
            entry.done.send_replace(Some(Error::new(reason.clone())));
        }
        self.status.send_modify(|s| s.endpoints.clear());
    }

    fn close(&self) {
        if self.closed.is_cancelled() {
            return;
        }
        // Close the connections before waking the tasks that serve them, so none of
        // those tasks can drop a connection from the cache before it is closed.
        self.cache.close_all("manager closed");
        self.stop_listeners(Reason::ManagerClosed);
        self.closed.cancel();
        self.status.send_modify(|s| s.closed = true);
    }

    /// Removes listener `id` after it failed by itself.
    fn listener_failed(&self, id: u64, endpoint: &Endpoint, error: Error) {
        let entry = {
            let mut listeners = self.lock_listeners();
            let position = listeners.iter().position(|l| l.id == id);
            position.map(|p| listeners.remove(p))
        };
        // Gone already: stopped on purpose, not a failure.
        let Some(entry) = entry else { return };
        tracing::warn!(%endpoint, %error, "listener failed");
        entry.done.send_replace(Some(error.clone()));
        self.status.send_modify(|s| {
            s.endpoints.retain(|e| e != endpoint);
            s.listen_errors.push((endpoint.clone(), error));
        });
    }
}

/// Takes connections from one listener until it fails or is stopped.
async fn accept_connections(
    shared: Arc<Shared>,
    id: u64,
    protocol: String,
    endpoint: Endpoint,
    listener: Arc<dyn Listener>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.closed.cancelled() => return,
        };
        match accepted {
            Ok(conn) => {
                if let Err(e) =
                    identity::authorize(shared.config.accept_authorizer.as_ref(), conn.remote_key())
                {
                    tracing::info!(%endpoint, error = %e, "refusing connection");
                    conn.close(CloseCode::NotTrusted, "not trusted");
                    continue;
                }
                let managed = ManagedConn::new(conn, &protocol, false, shared.config.max_msg_size);
                tracing::debug!(remote = %managed.remote_endpoint(), peer = %managed.remote_identity(), "accepted");
                if shared.cache.insert_accepted(managed.clone()).is_err() {
                    managed.close();
                    return;
                }
                tokio::spawn(accept_flows(shared.clone(), managed));
            }
            Err(error) => {
                shared.listener_failed(id, &endpoint, error);
                return;
            }
        }
    }
}

/// Hands the flows a peer opens on `conn` to [`Manager::accept`], until the
/// connection closes.
async fn accept_flows(shared: Arc<Shared>, conn: ManagedConn) {
    loop {
        let raw = tokio::select! {
            raw = conn.raw().accept_flow() => raw,
            _ = shared.closed.cancelled() => {
                conn.close_with(CloseCode::Closed, "manager closed");
                break;
            }
        };
        let Ok(raw) = raw else { break };
        let flow = Flow::new(raw, conn.clone(), shared.config.max_msg_size);
        if shared.accept_tx.send(flow).await.is_err() {
            break;
        }
    }
    shared.cache.remove(&conn);
}

/// Closes connections that have had no open flow for the idle timeout.
async fn evict_idle_connections(shared: Arc<Shared>) {
    let idle = shared.config.idle_timeout;
    let period = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => { shared.cache.evict_idle(idle); }
            _ = shared.closed.cancelled() => return,
        }
    }
}
