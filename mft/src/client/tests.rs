//! The client's unit tests.

use std::time::Duration;

use flow::Endpoint;

use super::retry::asked_delay;
use super::*;
use crate::wire::RefuseCode;

#[test]
fn retries_wait_as_long_as_the_server_asks() {
    let busy_https = Error::Flow(flow::Error::new(flow::Reason::Busy(Duration::from_secs(3))));
    assert!(busy_https.is_retryable());
    assert_eq!(asked_delay(&busy_https), Some(Duration::from_secs(3)));
    let busy_mft = Error::Refused {
        code: RefuseCode::Busy,
        message: String::new(),
        retry_after: Some(Duration::from_millis(1500)),
    };
    assert_eq!(asked_delay(&busy_mft), Some(Duration::from_millis(1500)));
    let lost = Error::Flow(flow::Error::new(flow::Reason::ConnectionLost("x".into())));
    assert_eq!(asked_delay(&lost), None, "backoff decides");
    let refused = Error::Refused {
        code: RefuseCode::NotAuthorized,
        message: String::new(),
        retry_after: None,
    };
    assert!(!refused.is_retryable());
}

#[test]
fn a_refused_first_connection_is_final_and_a_later_one_is_retried() {
    let nothing = Error::Flow(flow::Error::new(flow::Reason::Refused("x".into())));
    assert!(nothing.is_refused());
    assert!(
        !nothing.is_retryable(),
        "nothing listens: retrying will not help"
    );
    assert!(!nothing.is_retryable_after(0));
    assert!(
        nothing.is_retryable_after(3),
        "a server that took part of the operation is restarting"
    );
    let timed_out = Error::Flow(flow::Error::new(flow::Reason::Timeout(
        Duration::from_secs(1),
    )));
    assert!(timed_out.is_retryable_after(0) && !timed_out.is_refused());
    let unresolvable = Error::Flow(flow::Error::new(flow::Reason::Resolve("x".into())));
    assert!(!unresolvable.is_retryable_after(0));
    let untrusted = Error::Flow(flow::Error::new(flow::Reason::RefusedByPeer));
    assert!(!untrusted.is_retryable_after(5));
}

#[test]
fn config_names_the_bad_field() {
    let endpoint: Endpoint = "quic://127.0.0.1:1".parse().unwrap();
    let key = flow::Identity::generate().public_key();
    let field = |f: &dyn Fn(&mut ClientConfig)| {
        let mut c = ClientConfig::new(endpoint.clone(), key);
        f(&mut c);
        match c.validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        field(&|c| {
            c.chunk_size(100);
        }),
        "chunk size"
    );
    assert_eq!(
        field(&|c| {
            c.chunk_size(64 << 20);
        }),
        "chunk size"
    );
    assert_eq!(
        field(&|c| {
            c.streams(0);
        }),
        "streams"
    );
    assert_eq!(
        field(&|c| {
            c.voucher(vec![0; 9000]);
        }),
        "voucher"
    );
    assert_eq!(
        field(&|c| {
            c.dial_timeout(Duration::ZERO);
        }),
        "dial timeout"
    );
    assert!(matches!(
        check_batch_id(b""),
        Err(Error::Config {
            field: "batch id",
            ..
        })
    ));
    assert!(matches!(
        check_batch_id(&[0; 257]),
        Err(Error::Config {
            field: "batch id",
            ..
        })
    ));
    assert!(
        check_batch_id(b"../../etc/passwd").is_ok(),
        "batch ids are opaque bytes"
    );
}
