//! Identities: a peer *is* its Ed25519 key.
//!
//! An [`Identity`] is an Ed25519 key pair. From it we make a self-signed X.509
//! certificate that carries the public key through TLS 1.3; our rustls verifiers
//! ignore names, dates and issuers, check that the certificate holds an Ed25519 key,
//! verify the handshake signature with it (proof of possession), and ask a
//! [`PeerAuthorizer`] whether that key is trusted. No certificate authority is involved.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::error::{Error, Reason, Result};

/// The DER prefix of a SubjectPublicKeyInfo holding an Ed25519 key (RFC 8410): the
/// 32 key bytes follow it, and nothing else.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The server name every dialer sends in TLS; certificates are never checked against
/// it (a peer is its key, not a name).
pub const TLS_SERVER_NAME: &str = "mftq.invalid";

/// A peer's public Ed25519 key: the identity of a peer.
///
/// Its text form is 64 lowercase hex digits; [`FromStr`] also accepts upper case.
///
/// ```
/// use flow::{Identity, PeerKey};
/// let id = Identity::generate();
/// let text = id.public_key().to_string();
/// let back: PeerKey = text.parse().unwrap();
/// assert_eq!(back, id.public_key());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey([u8; 32]);

impl PeerKey {
    /// Takes 32 bytes as a key, refusing bytes that are not a valid Ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self> {
        VerifyingKey::from_bytes(&bytes)
            .map_err(|e| Error::new(Reason::MalformedKey(format!("not an Ed25519 key: {e}"))))?;
        Ok(PeerKey(bytes))
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies an Ed25519 signature by this key, strictly (no malleable or
    /// small-order encodings).
    pub fn verify_strict(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(signature) else {
            return false;
        };
        key.verify_strict(message, &sig).is_ok()
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey({self})")
    }
}

impl FromStr for PeerKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = |why: String| Error::new(Reason::MalformedKey(why));
        if s.len() != 64 {
            return Err(bad(format!(
                "a public key is 64 hex digits, got {} characters",
                s.len()
            )));
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| bad("not hex".into()))?;
            bytes[i] = u8::from_str_radix(text, 16)
                .map_err(|_| bad(format!("{text:?} is not a hex byte")))?;
        }
        PeerKey::from_bytes(bytes)
    }
}

/// An Ed25519 key pair with the self-signed certificate that presents it in TLS.
///
/// Cheap to clone. Load and save it as PKCS#8 PEM.
///
/// ```
/// use flow::Identity;
/// let id = Identity::generate();
/// let pem = id.to_pkcs8_pem();
/// let again = Identity::from_pkcs8_pem(&pem).unwrap();
/// assert_eq!(id.public_key(), again.public_key());
/// ```
#[derive(Clone)]
pub struct Identity {
    inner: Arc<IdentityInner>,
}

struct IdentityInner {
    signing: SigningKey,
    public: PeerKey,
    cert: CertificateDer<'static>,
    key_der: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        // The OS random source failing is not something a program can work around.
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        Self::from_signing_key(SigningKey::from_bytes(&seed))
            .expect("a freshly generated key always yields a certificate")
    }

    /// The identity of a 32-byte Ed25519 secret seed.
    pub fn from_secret_bytes(seed: &[u8; 32]) -> Result<Self> {
        Self::from_signing_key(SigningKey::from_bytes(seed))
    }

    fn from_signing_key(signing: SigningKey) -> Result<Self> {
        let bad = |why: String| Error::new(Reason::MalformedKey(why));
        let der = signing
            .to_pkcs8_der()
            .map_err(|e| bad(format!("cannot encode key: {e}")))?;
        let key_der = PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key_der, &rcgen::PKCS_ED25519)
            .map_err(|e| bad(format!("cannot use key for a certificate: {e}")))?;
        let public = PeerKey(signing.verifying_key().to_bytes());
        let params =
            certificate_params(&public).map_err(|e| bad(format!("certificate parameters: {e}")))?;
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| bad(format!("cannot sign certificate: {e}")))?;
        Ok(Identity {
            inner: Arc::new(IdentityInner {
                signing,
                public,
                cert: cert.der().clone(),
                key_der,
            }),
        })
    }

    /// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`), of
    /// version 1 (RFC 8410, as [`Identity::to_pkcs8_pem`] writes it) or version 2
    /// (with the public key, which must then match).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self> {
        let signing = SigningKey::from_pkcs8_pem(pem).map_err(|e| {
            Error::new(Reason::MalformedKey(format!(
                "not a PKCS#8 PEM Ed25519 private key: {e}"
            )))
        })?;
        Self::from_signing_key(signing)
    }

    /// The PKCS#8 PEM text of the private key, in the form RFC 8410 gives
    /// (version 1, the 32-byte seed and no public key inside), which OpenSSL
    /// (`openssl pkey`) and Python's `cryptography` read. [`Identity::from_pkcs8_pem`]
    /// reads it and the version 2 form (with the public key) alike.
    pub fn to_pkcs8_pem(&self) -> String {
        let seed = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.inner.signing.to_bytes(),
            public_key: None,
        };
        seed.to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map(|pem| pem.to_string())
            // Encoding 32 bytes we hold cannot fail.
            .unwrap_or_default()
    }

    /// Reads a key file written by [`Identity::save`] (or any PKCS#8 PEM Ed25519 key).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(Reason::MalformedKey(format!(
                "cannot read key file {}: {e}",
                path.display()
            )))
        })?;
        Self::from_pkcs8_pem(&text).map_err(|e| {
            Error::new(Reason::MalformedKey(format!(
                "key file {}: {}",
                path.display(),
                e.reason()
            )))
        })
    }

    /// Writes the private key as PKCS#8 PEM, readable only by the owner (0600 on Unix).
    /// Refuses to replace an existing file.
    pub fn save(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        file.write_all(self.to_pkcs8_pem().as_bytes())?;
        file.sync_all()
    }

    /// The public key: what peers know us by.
    pub fn public_key(&self) -> PeerKey {
        self.inner.public
    }

    /// Signs `message` with the private key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.inner.signing.sign(message).to_bytes()
    }

    /// The self-signed certificate presented in TLS.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.inner.cert
    }

    fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.inner.key_der.clone_key())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.inner.public)
            .finish_non_exhaustive()
    }
}

/// Decides whether a peer that proved its key is trusted.
///
/// Implementations are called during every TLS handshake, so they must be quick.
pub trait PeerAuthorizer: Send + Sync + fmt::Debug {
    /// Whether `peer` may talk to us.
    fn is_authorized(&self, peer: &PeerKey) -> bool;

    /// The one key this authorizer accepts, when it pins a key; used to report a
    /// mismatch clearly.
    fn pinned(&self) -> Option<PeerKey> {
        None
    }
}

/// Ready-made authorizers: any peer, an allow-list, a pinned key, or a callback.
///
/// ```
/// use flow::{Authorizer, Identity, PeerAuthorizer};
/// let alice = Identity::generate().public_key();
/// let bob = Identity::generate().public_key();
/// assert!(Authorizer::pinned(alice).is_authorized(&alice));
/// assert!(!Authorizer::allow([alice]).is_authorized(&bob));
/// assert!(Authorizer::from_fn(move |k| *k == bob).is_authorized(&bob));
/// ```
#[derive(Clone)]
pub enum Authorizer {
    /// Trusts every peer that proves some Ed25519 key.
    Any,
    /// Trusts exactly these keys.
    AllowList(Arc<HashSet<PeerKey>>),
    /// Trusts one key, and reports any other as a pin mismatch.
    Pinned(PeerKey),
    /// Asks a function.
    Callback(Arc<dyn Fn(&PeerKey) -> bool + Send + Sync>),
}

impl Authorizer {
    /// Trusts any peer: the peer's key is still proven and reported, just not checked.
    pub fn any() -> Arc<Self> {
        Arc::new(Authorizer::Any)
    }

    /// Trusts exactly the given keys.
    pub fn allow(keys: impl IntoIterator<Item = PeerKey>) -> Arc<Self> {
        Arc::new(Authorizer::AllowList(Arc::new(keys.into_iter().collect())))
    }

    /// Trusts only `key`.
    pub fn pinned(key: PeerKey) -> Arc<Self> {
        Arc::new(Authorizer::Pinned(key))
    }

    /// Trusts the keys for which `f` returns true.
    pub fn from_fn(f: impl Fn(&PeerKey) -> bool + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Authorizer::Callback(Arc::new(f)))
    }
}

impl PeerAuthorizer for Authorizer {
    fn is_authorized(&self, peer: &PeerKey) -> bool {
        match self {
            Authorizer::Any => true,
            Authorizer::AllowList(keys) => keys.contains(peer),
            Authorizer::Pinned(key) => key == peer,
            Authorizer::Callback(f) => f(peer),
        }
    }

    fn pinned(&self) -> Option<PeerKey> {
        match self {
            Authorizer::Pinned(key) => Some(*key),
            _ => None,
        }
    }
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authorizer::Any => f.write_str("Authorizer::Any"),
            Authorizer::AllowList(keys) => write!(f, "Authorizer::AllowList({} keys)", keys.len()),
            Authorizer::Pinned(key) => write!(f, "Authorizer::Pinned({key})"),
            Authorizer::Callback(_) => f.write_str("Authorizer::Callback"),
        }
    }
}

/// The error for a peer `authorizer` refuses.
pub(crate) fn untrusted(authorizer: &dyn PeerAuthorizer, peer: PeerKey) -> Error {
    match authorizer.pinned() {
        Some(expected) => Error::new(Reason::PinMismatch {
            expected,
            actual: peer,
        }),
        None => Error::new(Reason::NotAuthorized(peer)),
    }
}

/// Checks `peer` against `authorizer`, with the error a caller should see.
pub(crate) fn authorize(authorizer: &dyn PeerAuthorizer, peer: PeerKey) -> Result<()> {
    if authorizer.is_authorized(&peer) {
        Ok(())
    } else {
        Err(untrusted(authorizer, peer))
    }
}

/// The Ed25519 key carried by a certificate, or why there is none.
pub fn key_from_certificate(cert: &CertificateDer<'_>) -> Result<PeerKey> {
    let no_key = |why: &str| Error::new(Reason::NoPeerKey(why.to_string()));
    let parsed =
        webpki::EndEntityCert::try_from(cert).map_err(|_| no_key("certificate does not parse"))?;
    let spki = parsed.subject_public_key_info();
    let spki: &[u8] = spki.as_ref();
    let key = spki
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .ok_or_else(|| no_key("certificate key is not Ed25519"))?;
    let bytes: [u8; 32] = key
        .try_into()
        .map_err(|_| no_key("Ed25519 key has the wrong length"))?;
    PeerKey::from_bytes(bytes).map_err(|_| no_key("Ed25519 key is not a valid point"))
}

/// The peer's key from the certificate chain a TLS session presented.
pub fn key_from_certificates(certs: &[CertificateDer<'_>]) -> Result<PeerKey> {
    match certs {
        [cert] => key_from_certificate(cert),
        [] => Err(Error::new(Reason::NoPeerKey(
            "no certificate presented".into(),
        ))),
        _ => Err(Error::new(Reason::NoPeerKey(
            "expected exactly one self-signed certificate".into(),
        ))),
    }
}

/// What a verifier decided, kept so a failed handshake can be reported precisely
/// (rustls reduces every refusal to an alert).
#[derive(Clone, Debug, Default)]
pub(crate) struct Verdict(Arc<Mutex<Option<Error>>>);

impl Verdict {
    fn refuse(&self, err: Error) -> rustls::Error {
        let alert = match err.reason() {
            Reason::NotAuthorized(_) | Reason::PinMismatch { .. } => {
                CertificateError::ApplicationVerificationFailure
            }
            _ => CertificateError::BadEncoding,
        };
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(err);
        }
        rustls::Error::InvalidCertificate(alert)
    }

    /// The refusal recorded during the handshake, if any.
    pub(crate) fn take(&self) -> Option<Error> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// The rustls verifier for both sides: Ed25519 self-signed certificates only, the
/// handshake signature checked strictly, the key passed to an authorizer.
#[derive(Debug)]
struct KeyVerifier {
    authorizer: Arc<dyn PeerAuthorizer>,
    verdict: Verdict,
    /// Servers only: whether a client must present a certificate. Even when not,
    /// a certificate that is presented is checked as strictly.
    client_auth_mandatory: bool,
}

impl KeyVerifier {
    fn check_cert(&self, cert: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        let key = key_from_certificate(cert).map_err(|e| self.verdict.refuse(e))?;
        authorize(self.authorizer.as_ref(), key).map_err(|e| self.verdict.refuse(e))
    }

    fn check_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(self.verdict.refuse(Error::new(Reason::BadSignature)));
        }
        let key = key_from_certificate(cert).map_err(|e| self.verdict.refuse(e))?;
        if key.verify_strict(message, dss.signature()) {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(self.verdict.refuse(Error::new(Reason::BadSignature)))
        }
    }
}

impl ServerCertVerifier for KeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(self.verdict.refuse(Error::new(Reason::NoPeerKey(
                "expected exactly one self-signed certificate".into(),
            ))));
        }
        self.check_cert(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for KeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.client_auth_mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(self.verdict.refuse(Error::new(Reason::NoPeerKey(
                "expected exactly one self-signed certificate".into(),
            ))));
        }
        self.check_cert(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3 client configuration presenting `identity` and trusting the servers
/// `authorizer` accepts; `verdict` records why a server was refused.
pub(crate) fn client_tls_config(
    identity: &Identity,
    authorizer: Arc<dyn PeerAuthorizer>,
    verdict: Verdict,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig> {
    let bad = |e: rustls::Error| Error::new(Reason::BadConfig(format!("tls client: {e}")));
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(KeyVerifier {
            authorizer,
            verdict,
            client_auth_mandatory: true,
        }))
        .with_client_auth_cert(
            vec![identity.certificate().clone()],
            identity.private_key_der(),
        )
        .map_err(bad)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_early_data = false;
    Ok(config)
}

/// A TLS 1.3 server configuration presenting `identity`, requiring (or, with
/// `client_auth_mandatory` false, allowing) a client certificate and trusting the
/// clients `authorizer` accepts.
pub(crate) fn server_tls_config(
    identity: &Identity,
    authorizer: Arc<dyn PeerAuthorizer>,
    alpn: &[&[u8]],
    client_auth_mandatory: bool,
) -> Result<rustls::ServerConfig> {
    let bad = |e: rustls::Error| Error::new(Reason::BadConfig(format!("tls server: {e}")));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad)?
        .with_client_cert_verifier(Arc::new(KeyVerifier {
            authorizer,
            verdict: Verdict::default(),
            client_auth_mandatory,
        }))
        .with_single_cert(
            vec![identity.certificate().clone()],
            identity.private_key_der(),
        )
        .map_err(bad)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.max_early_data_size = 0;
    // No session resumption: a resumed session skips the client-certificate check, so
    // an authorizer that changed (a revoked key) would not be asked again.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// How long an identity's certificate says it is valid, from an hour before it
/// was made (for clocks a little behind). Our verifiers pin keys and ignore the
/// dates, but people and tools read them.
const CERTIFICATE_VALIDITY: time::Duration = time::Duration::days(365);

/// The certificate of `key`: named after the key (its 64 hex digits are the
/// common name, which X.520 caps at 64 characters), valid from now for a year.
fn certificate_params(
    key: &PeerKey,
) -> std::result::Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![TLS_SERVER_NAME.to_string()])?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::OrganizationName, "mftq");
    name.push(rcgen::DnType::CommonName, key.to_string());
    params.distinguished_name = name;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CERTIFICATE_VALIDITY;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_the_public_key() {
        let id = Identity::generate();
        assert_eq!(
            key_from_certificate(id.certificate()).unwrap(),
            id.public_key()
        );
    }

    #[test]
    fn certificate_names_the_key_and_has_sane_dates() {
        let id = Identity::generate();
        let der: &[u8] = id.certificate().as_ref();
        let has = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        assert!(has(id.public_key().to_string().as_bytes()), "CN is the key");
        assert!(has(b"mftq"));
        assert!(!has(b"rcgen self signed cert"));
        // UTCTime YYMMDD of the expiry, a year from now (4096 would be GeneralizedTime).
        let expiry = time::OffsetDateTime::now_utc() + CERTIFICATE_VALIDITY;
        let yymmdd = format!(
            "{:02}{:02}{:02}",
            expiry.year() % 100,
            u8::from(expiry.month()),
            expiry.day()
        );
        assert!(has(yymmdd.as_bytes()), "expires {yymmdd}");
        assert!(!has(b"4096"));
    }

    #[test]
    fn pem_round_trip_and_malformed_input() {
        let id = Identity::generate();
        let pem = id.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = Identity::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(again.public_key(), id.public_key());
        // RFC 8410's form: a 48-byte document, version 0, the seed and no
        // public key (what OpenSSL 3.0 reads; the 83-byte version 2 form it does
        // not).
        let der = ed25519_dalek::pkcs8::spki::der::pem::decode_vec(pem.as_bytes())
            .unwrap()
            .1;
        assert_eq!(der.len(), 48, "{der:02x?}");
        assert_eq!(&der[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00]);
        assert_eq!(&der[16..], &id.inner.signing.to_bytes()[..]);
        // The version 2 form, as earlier versions wrote it, still reads.
        let v2 = id
            .inner
            .signing
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        assert_ne!(v2.as_str(), pem);
        assert_eq!(
            Identity::from_pkcs8_pem(&v2).unwrap().public_key(),
            id.public_key()
        );
        for bad in [
            "",
            "hello",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let err = Identity::from_pkcs8_pem(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::BadArg, "{bad:?}");
        }
    }

    #[test]
    fn save_refuses_to_overwrite_and_load_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        let id = Identity::generate();
        id.save(&path).unwrap();
        assert!(id.save(&path).is_err());
        assert_eq!(Identity::load(&path).unwrap().public_key(), id.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
        let err = Identity::load(dir.path().join("bad.key")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::BadArg);
        assert!(err.to_string().contains("bad.key"), "{err}");
    }

    #[test]
    fn peer_key_text_form() {
        let key = Identity::generate().public_key();
        let text = key.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.to_uppercase().parse::<PeerKey>().unwrap(), key);
        for bad in ["", "zz", &text[..63], &format!("{text}00")] {
            assert_eq!(
                bad.parse::<PeerKey>().unwrap_err().kind(),
                crate::ErrorKind::BadArg
            );
        }
    }

    #[test]
    fn signatures_verify_strictly() {
        let id = Identity::generate();
        let sig = id.sign(b"hello");
        assert!(id.public_key().verify_strict(b"hello", &sig));
        assert!(!id.public_key().verify_strict(b"hellO", &sig));
        assert!(!id.public_key().verify_strict(b"hello", &sig[..63]));
    }
}
