//! Transfer secrets sealed under the server's at-rest key before they reach a store.

use super::Server;
use crate::crypto::{self, Cipher, context};
use crate::error::Result;
use crate::handshake::PushSecret;
use crate::store::{StoreError, TransferId};
use crate::wire::DataKey;

impl Server {
    /// The data key and completion id, sealed under the at-rest key: nonce ‖ sealed.
    pub(super) fn seal_at_rest(&self, transfer: &TransferId, secret: &PushSecret) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        crypto::fill_random(&mut nonce);
        seal_secret_at_rest(&self.inner.at_rest, transfer, secret, &nonce)
    }

    pub(super) fn open_at_rest(
        &self,
        transfer: &TransferId,
        sealed: &[u8],
    ) -> Result<(DataKey, [u8; 32]), StoreError> {
        let corrupt = || StoreError::Corrupt(format!("sealed secret of transfer {transfer}"));
        if sealed.len() < 12 {
            return Err(corrupt());
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&sealed[..12]);
        let aad = [context::AT_REST_AAD, &transfer.0].concat();
        let plain = crypto::open(&self.inner.at_rest, &nonce, &aad, &sealed[12..])
            .map_err(|_| corrupt())?;
        if plain.len() != 64 {
            return Err(corrupt());
        }
        let mut plain = zeroize::Zeroizing::new(plain);
        let mut key = [0u8; 32];
        let mut completion = [0u8; 32];
        key.copy_from_slice(&plain[..32]);
        completion.copy_from_slice(&plain[32..]);
        let key = DataKey::from_bytes(key);
        plain.fill(0);
        Ok((key, completion))
    }
}

/// A transfer's data key and completion id sealed under the server's at-rest key
/// with `nonce`: nonce ‖ ciphertext ‖ tag, as the store keeps it.
pub(crate) fn seal_secret_at_rest(
    at_rest: &Cipher,
    transfer: &TransferId,
    secret: &PushSecret,
    nonce: &[u8; 12],
) -> Vec<u8> {
    let aad = [context::AT_REST_AAD, &transfer.0].concat();
    let plain = zeroize::Zeroizing::new(
        [&secret.data_key.expose()[..], &secret.completion_id[..]].concat(),
    );
    let mut out = nonce.to_vec();
    out.extend(crypto::seal(at_rest, nonce, &aad, &plain));
    out
}
