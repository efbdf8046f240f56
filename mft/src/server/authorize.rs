//! Who may send and retrieve what: one question, asked with a named request, so a
//! voucher can never be passed where a batch id belongs.

use flow::PeerKey;

/// What a request wants to do with its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Send (push) a batch to the server.
    Send,
    /// Retrieve (pull) a batch, or see it in a listing.
    Retrieve,
}

/// One request to authorise: who asks, with which voucher, for which batch, to do
/// what. The key is the TLS identity of the connection, already checked against the
/// signature of the request.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Request<'a> {
    /// The requester's key.
    pub key: &'a PeerKey,
    /// The application token it presented (empty if none).
    pub voucher: &'a [u8],
    /// The batch id (opaque bytes).
    pub batch_id: &'a [u8],
    /// Send or retrieve.
    pub direction: Direction,
}

impl<'a> Request<'a> {
    /// A request by `key` with `voucher` to act on `batch_id` in `direction`.
    pub fn new(
        key: &'a PeerKey,
        voucher: &'a [u8],
        batch_id: &'a [u8],
        direction: Direction,
    ) -> Self {
        Request {
            key,
            voucher,
            batch_id,
            direction,
        }
    }
}

/// Decides requests. Closures `Fn(&Request) -> bool` are authorisers too.
///
/// ```
/// use mft::{Direction, Request};
/// use flow::Identity;
/// let alice = Identity::generate().public_key();
/// // Alice may send anything; everyone may retrieve batches under "public/".
/// let policy = move |r: &Request<'_>| match r.direction {
///     Direction::Send => *r.key == alice,
///     Direction::Retrieve => r.batch_id.starts_with(b"public/"),
/// };
/// let request = Request::new(&alice, b"", b"public/x", Direction::Send);
/// assert!(mft::Authorize::authorize(&policy, &request));
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// Whether `request` may go ahead.
    fn authorize(&self, request: &Request<'_>) -> bool;
}

impl<F> Authorize for F
where
    F: Fn(&Request<'_>) -> bool + Send + Sync + 'static,
{
    fn authorize(&self, request: &Request<'_>) -> bool {
        self(request)
    }
}

/// Refuses everything: the default, so a server admits nobody until told whom.
#[derive(Clone, Copy, Debug, Default)]
pub struct DenyAll;

impl Authorize for DenyAll {
    fn authorize(&self, _: &Request<'_>) -> bool {
        false
    }
}
