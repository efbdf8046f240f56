//! Shared set-up for the integration tests: logging, managers on a transport.

#![allow(dead_code, unreachable_pub)]

pub mod anonymous;
pub mod mft_harness;
#[allow(unused_imports)]
pub use anonymous::anonymous_tls;

/// Generates one `#[tokio::test]` per transport (QUIC, HTTPS, mem) for each scenario
/// `async fn(Transport)` named; the test file must have `init_tracing` and
/// `Transport` in scope.
#[allow(unused_macros)]
macro_rules! on_every_transport {
    ($($scenario:ident),* $(,)?) => {
        mod quic {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::init_tracing();
                    super::$scenario(super::Transport::quic()).await;
                }
            )*
        }
        mod https {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::init_tracing();
                    super::$scenario(super::Transport::https()).await;
                }
            )*
        }
        mod mem {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::init_tracing();
                    super::$scenario(super::Transport::mem()).await;
                }
            )*
        }
    };
}

/// Implements the four storage traits of `$ty` by handing every call to its field
/// `$field`, so a test store overrides only the step it is about (in its own
/// `impl Store`); with `without`, all but `SegmentStore`, which the test store then
/// writes itself.
#[allow(unused_macros)]
macro_rules! delegate_store {
    ($ty:ty, $field:ident) => {
        delegate_store!($ty, $field, without);
        delegate_store!(@segment $ty, $field);
    };
    // Every trait but SegmentStore, which the test store writes itself.
    ($ty:ty, $field:ident, without) => {
        delegate_store!(@secret $ty, $field);
        delegate_store!(@transfer $ty, $field);
        delegate_store!(@batch $ty, $field);
    };
    (@secret $ty:ty, $field:ident) => {
        #[async_trait::async_trait]
        impl mft::store::SecretStore for $ty {
            async fn put_secret(
                &self,
                t: mft::store::TransferId,
                sealed: Vec<u8>,
            ) -> mft::store::StoreResult<()> {
                self.$field.put_secret(t, sealed).await
            }
            async fn secret(
                &self,
                t: mft::store::TransferId,
            ) -> mft::store::StoreResult<Option<Vec<u8>>> {
                self.$field.secret(t).await
            }
            async fn delete_secret(
                &self,
                t: mft::store::TransferId,
            ) -> mft::store::StoreResult<()> {
                self.$field.delete_secret(t).await
            }
        }
    };
    (@segment $ty:ty, $field:ident) => {
        #[async_trait::async_trait]
        impl mft::store::SegmentStore for $ty {
            async fn put_segment(
                &self,
                t: mft::store::TransferId,
                info: mft::store::SegmentInfo,
                offset: u64,
                data: bytes::Bytes,
            ) -> mft::store::StoreResult<()> {
                self.$field.put_segment(t, info, offset, data).await
            }
            async fn segments(
                &self,
                t: mft::store::TransferId,
            ) -> mft::store::StoreResult<Vec<mft::store::SegmentInfo>> {
                self.$field.segments(t).await
            }
            async fn read_segment(
                &self,
                t: mft::store::TransferId,
                offset: u64,
                len: u32,
            ) -> mft::store::StoreResult<bytes::Bytes> {
                self.$field.read_segment(t, offset, len).await
            }
            async fn delete_segments(
                &self,
                t: mft::store::TransferId,
            ) -> mft::store::StoreResult<()> {
                self.$field.delete_segments(t).await
            }
        }
    };
    (@transfer $ty:ty, $field:ident) => {
        #[async_trait::async_trait]
        impl mft::store::TransferStore for $ty {
            async fn put_transfer(
                &self,
                r: mft::store::TransferRecord,
            ) -> mft::store::StoreResult<()> {
                self.$field.put_transfer(r).await
            }
            async fn transfer(
                &self,
                t: mft::store::TransferId,
            ) -> mft::store::StoreResult<Option<mft::store::TransferRecord>> {
                self.$field.transfer(t).await
            }
            async fn find_transfer(
                &self,
                sender: [u8; 32],
                batch_id: &[u8],
            ) -> mft::store::StoreResult<Option<mft::store::TransferRecord>> {
                self.$field.find_transfer(sender, batch_id).await
            }
            async fn transfers(&self) -> mft::store::StoreResult<Vec<mft::store::TransferRecord>> {
                self.$field.transfers().await
            }
            async fn open_transfer_count(&self, sender: [u8; 32]) -> mft::store::StoreResult<u64> {
                self.$field.open_transfer_count(sender).await
            }
            async fn transfers_of(
                &self,
                sender: [u8; 32],
            ) -> mft::store::StoreResult<Vec<mft::store::TransferRecord>> {
                self.$field.transfers_of(sender).await
            }
            async fn delete_transfer(
                &self,
                t: mft::store::TransferId,
            ) -> mft::store::StoreResult<()> {
                self.$field.delete_transfer(t).await
            }
        }
    };
    (@batch $ty:ty, $field:ident) => {
        #[async_trait::async_trait]
        impl mft::store::BatchStore for $ty {
            async fn put_batch(&self, r: mft::store::BatchRecord) -> mft::store::StoreResult<()> {
                self.$field.put_batch(r).await
            }
            async fn batch(
                &self,
                owner: &[u8; 32],
                id: &[u8],
            ) -> mft::store::StoreResult<Option<mft::store::BatchRecord>> {
                self.$field.batch(owner, id).await
            }
            async fn batch_of_transfer(
                &self,
                t: mft::store::TransferId,
            ) -> mft::store::StoreResult<Option<mft::store::BatchRecord>> {
                self.$field.batch_of_transfer(t).await
            }
            async fn owners_of(
                &self,
                id: &[u8],
                limit: usize,
            ) -> mft::store::StoreResult<Vec<[u8; 32]>> {
                self.$field.owners_of(id, limit).await
            }
            async fn batch_owners(
                &self,
                after: Option<[u8; 32]>,
                limit: usize,
            ) -> mft::store::StoreResult<Vec<[u8; 32]>> {
                self.$field.batch_owners(after, limit).await
            }
            async fn batches_of(
                &self,
                owner: &[u8; 32],
                after: &[u8],
                limit: usize,
            ) -> mft::store::StoreResult<Vec<mft::store::BatchRecord>> {
                self.$field.batches_of(owner, after, limit).await
            }
            async fn holdings(
                &self,
                owner: &[u8; 32],
            ) -> mft::store::StoreResult<mft::store::Holdings> {
                self.$field.holdings(owner).await
            }
            async fn batches(&self) -> mft::store::StoreResult<Vec<mft::store::BatchRecord>> {
                self.$field.batches().await
            }
            async fn remove_batch(
                &self,
                owner: &[u8; 32],
                batch_id: &[u8],
            ) -> mft::store::StoreResult<Option<mft::store::BatchRecord>> {
                self.$field.remove_batch(owner, batch_id).await
            }
            async fn retired(&self) -> mft::store::StoreResult<Vec<mft::store::TransferId>> {
                self.$field.retired().await
            }
            async fn forget_retired(
                &self,
                t: mft::store::TransferId,
            ) -> mft::store::StoreResult<()> {
                self.$field.forget_retired(t).await
            }
        }
    };
}

use std::sync::{Arc, Once};
use std::time::Duration;

use flow::{Endpoint, Identity, Manager, ManagerConfig, MemProtocol, Registry};

/// A generous bound for operations that should be quick; tests never assert speed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends the crates' logs to the test output (shown for failing tests); `RUST_LOG`
/// selects the level.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Which protocol a test runs over.
#[derive(Clone, Debug)]
pub enum Transport {
    /// Real QUIC on loopback.
    Quic,
    /// Real HTTPS (HTTP/2 over TLS over TCP) on loopback.
    Https,
    /// The in-process protocol; managers of one test share this network.
    Mem(MemProtocol),
}

impl Transport {
    pub fn quic() -> Self {
        Transport::Quic
    }

    pub fn https() -> Self {
        Transport::Https
    }

    pub fn mem() -> Self {
        Transport::Mem(MemProtocol::new())
    }

    /// Whether the accepting side can open flows back to the dialer (not over
    /// HTTP/2, where only clients open streams).
    pub fn server_opens_flows(&self) -> bool {
        !matches!(self, Transport::Https)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Https => "https",
            Transport::Mem(_) => "mem",
        }
    }

    /// An address to listen on.
    pub fn listen_address(&self) -> String {
        match self {
            Transport::Quic | Transport::Https => "127.0.0.1:0".to_string(),
            Transport::Mem(_) => format!("server-{}", rand_suffix()),
        }
    }

    /// An endpoint where nothing listens.
    pub fn dead_endpoint(&self) -> Endpoint {
        match self {
            Transport::Quic => {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let port = socket.local_addr().unwrap().port();
                drop(socket);
                Endpoint::new("quic", &format!("127.0.0.1:{port}")).unwrap()
            }
            Transport::Https => {
                let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = socket.local_addr().unwrap().port();
                drop(socket);
                Endpoint::new("https", &format!("127.0.0.1:{port}")).unwrap()
            }
            Transport::Mem(_) => Endpoint::new("mem", "nobody-home").unwrap(),
        }
    }

    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        if let Transport::Mem(network) = self {
            registry.register("mem", Arc::new(network.clone()), &[]);
        }
        registry
    }

    pub fn manager(&self, config: ManagerConfig) -> Manager {
        self.manager_as(Identity::generate(), config)
    }

    pub fn manager_as(&self, identity: Identity, config: ManagerConfig) -> Manager {
        Manager::new(identity, self.registry(), config).unwrap()
    }

    /// A manager listening on this transport, and the endpoint it listens on.
    pub async fn server(&self, config: ManagerConfig) -> (Manager, Endpoint) {
        let server = self.manager(config);
        let handle = server
            .listen(self.name(), &self.listen_address())
            .await
            .unwrap();
        let endpoint = handle.endpoint().clone();
        (server, endpoint)
    }
}

fn rand_suffix() -> String {
    Identity::generate().public_key().to_string()[..12].to_string()
}

/// Runs `f` with a bound, failing the test with `what` if it hangs.
pub async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {TIMEOUT:?}"))
}

/// Runs `f` with the bound `limit` (for the few operations that move hundreds of MiB).
pub async fn bounded_for<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// One direction's policy of a test server: sending or retrieving.
pub type Policy = Arc<dyn Fn(&mft::Request<'_>) -> bool + Send + Sync>;

/// A policy that lets every key through.
pub fn allow_all() -> Policy {
    Arc::new(|_| true)
}

/// A policy that refuses every key.
pub fn deny_all() -> Policy {
    Arc::new(|_| false)
}

/// A policy that lets only `key` through.
pub fn allow_only(key: flow::PeerKey) -> Policy {
    Arc::new(move |request| *request.key == key)
}

/// The server's authoriser: `senders` for sending (and deleting their own
/// batches), `retrievers` for retrieving and listing.
pub fn by_direction(senders: Policy, retrievers: Policy) -> impl mft::Authorize {
    move |request: &mft::Request<'_>| match request.direction {
        mft::Direction::Send => senders(request),
        mft::Direction::Delete => request.own_namespace() && senders(request),
        mft::Direction::Retrieve | mft::Direction::List => retrievers(request),
    }
}

/// Starts an mft server as `identity` over `store` on transport `t`, serving until
/// its manager closes: the server, the endpoint it listens on and its manager.
pub async fn mft_server(
    t: &Transport,
    identity: Identity,
    store: Arc<dyn mft::store::Store>,
    config: mft::ServerConfig,
    senders: Policy,
    retrievers: Policy,
) -> (mft::Server, Endpoint, Manager) {
    let authorize = by_direction(senders, retrievers);
    let (server, endpoint, manager, _serving) =
        serving_mft_server(t, identity, store, config, authorize).await;
    (server, endpoint, manager)
}

/// [`mft_server`] with one authoriser, also returning the task running `serve`.
pub async fn serving_mft_server(
    t: &Transport,
    identity: Identity,
    store: Arc<dyn mft::store::Store>,
    config: mft::ServerConfig,
    authorize: impl mft::Authorize,
) -> (mft::Server, Endpoint, Manager, tokio::task::JoinHandle<()>) {
    let manager = t.manager_as(identity.clone(), ManagerConfig::default());
    let endpoint = manager
        .listen(t.name(), &t.listen_address())
        .await
        .unwrap()
        .endpoint()
        .clone();
    let server = mft::Server::builder(identity, store)
        .config(config)
        .authorize(authorize)
        .build();
    let serving = tokio::spawn({
        let server = server.clone();
        let manager = manager.clone();
        async move { server.serve(manager).await }
    });
    (server, endpoint, manager, serving)
}

/// A door a test store holds a step at: the store says when a call arrives and
/// waits there until the test lets one through.
#[derive(Debug)]
pub struct Gate {
    entered: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            entered: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Gate {
    /// Called by the store: announces the call, then waits to be let through.
    pub async fn pass(&self) {
        self.entered.notify_one();
        let _permit = self.release.acquire().await;
    }

    /// Resolves once a call has arrived at the gate.
    pub async fn reached(&self) {
        self.entered.notified().await;
    }

    /// Lets one held call through.
    pub fn open_once(&self) {
        self.release.add_permits(1);
    }
}

/// A fresh private directory under the system's temporary directory, removed (with
/// everything in it) when dropped.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("mftq-test-{}", rand_suffix()));
        std::fs::create_dir(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `len` deterministic, incompressible bytes (xorshift), different per seed:
/// for tests that compare what comes back with what went in.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Bytes in the segment files of a `mftq serve --data data` run in `dir`: how far
/// a send has got, for tests that interrupt one part way.
pub fn stored_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("data").join("segments"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The SHA-256 of `data` in lowercase hex, as `mftq send` puts it in the metadata.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
