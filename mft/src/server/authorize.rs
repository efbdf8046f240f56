//! Who may send and retrieve what: one question, asked with a named request, so a
//! voucher can never be passed where a batch id belongs.

use flow::PeerKey;

/// What a request wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Send (push) a batch into the requester's own namespace.
    Send,
    /// Retrieve (pull) a batch of the owner's namespace.
    Retrieve,
    /// See the owner's namespace in a listing: which batches it holds, with their
    /// metadata. Asked once per namespace and listing page, with an empty batch
    /// id, so a listing costs one question per sender, not one per batch.
    List,
    /// Delete a completed batch of the owner's namespace (its owner, or a key
    /// the policy lets delete others' batches).
    Delete,
}

/// One request to authorise: who asks, with which voucher, for which batch of
/// whose namespace, to do what. The key is the TLS identity of the connection,
/// already checked against the signature of the request.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Request<'a> {
    /// The requester's key.
    pub key: &'a PeerKey,
    /// The application token it presented (empty if none).
    pub voucher: &'a [u8],
    /// The sender whose namespace the batch is in: the requester itself for
    /// [`Direction::Send`].
    pub owner: &'a [u8; 32],
    /// The batch id (opaque bytes; empty for [`Direction::List`]).
    pub batch_id: &'a [u8],
    /// What it wants to do.
    pub direction: Direction,
}

impl<'a> Request<'a> {
    /// A request by `key` with `voucher` to act on `batch_id` of `owner`'s
    /// namespace in `direction`.
    pub fn new(
        key: &'a PeerKey,
        voucher: &'a [u8],
        owner: &'a [u8; 32],
        batch_id: &'a [u8],
        direction: Direction,
    ) -> Self {
        Request {
            key,
            voucher,
            owner,
            batch_id,
            direction,
        }
    }

    /// Whether the request is about the requester's own namespace.
    pub fn own_namespace(&self) -> bool {
        self.owner == self.key.as_bytes()
    }
}

/// Decides requests. Closures `Fn(&Request) -> bool` are authorisers too.
///
/// ```
/// use mft::{Direction, Request};
/// use flow::Identity;
/// let alice = Identity::generate().public_key();
/// // Alice may send anything; everyone may list her batches and retrieve those
/// // under "public/".
/// let policy = move |r: &Request<'_>| match r.direction {
///     Direction::Send => *r.key == alice,
///     Direction::List => r.owner == alice.as_bytes(),
///     Direction::Retrieve => r.owner == alice.as_bytes() && r.batch_id.starts_with(b"public/"),
///     // Alice may delete her own batches; nobody may delete anyone else's.
///     Direction::Delete => *r.key == alice && r.own_namespace(),
/// };
/// let request = Request::new(&alice, b"", alice.as_bytes(), b"public/x", Direction::Send);
/// assert!(mft::Authorize::authorize(&policy, &request));
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// Whether `request` may go ahead.
    fn authorize(&self, request: &Request<'_>) -> bool;

    /// Whether `key` may connect at all: asked in the TLS handshake when the
    /// manager's accept authoriser is [`Server::door`](crate::Server::door), so a
    /// key refused here reaches no protocol state. The default admits every key
    /// that proves one (closures keep it); a policy with allow-lists should admit
    /// only the keys on them.
    fn admits(&self, _key: &PeerKey) -> bool {
        true
    }
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

    fn admits(&self, _: &PeerKey) -> bool {
        false
    }
}
