//! What users and files hand us as text: endpoints, public keys (allow-list
//! lines) and key files. Each parses or gives an error, never panics; what
//! parses prints back to something that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(endpoint) = text.parse::<flow::Endpoint>() {
        let again: flow::Endpoint = endpoint.to_string().parse().expect("reparses");
        assert_eq!(again, endpoint);
    }
    if let Ok(key) = text.parse::<flow::PeerKey>() {
        assert_eq!(key.to_string().parse::<flow::PeerKey>().ok(), Some(key));
    }
    let _ = flow::Identity::from_pkcs8_pem(text);
});
