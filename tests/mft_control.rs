//! Pausing, resuming and cancelling sends and pulls from their handles
//! ([`Sender::pause`](mft::Sender::pause) and siblings, the same on
//! [`Retriever`](mft::Retriever)): a pause holds the data back without losing
//! the transfer, a cancel ends it and frees what the server held for it.

#[macro_use]
mod common;

use std::time::Duration;

use common::mft_harness::*;
use common::{Transport, bounded, init_tracing};
use mft::{CancelReason, Error, Event, ServerConfig, ServerEvent};
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, oneshot};

on_every_transport!(
    cancelled_sends_free_their_slots,
    a_paused_send_holds_its_data_until_resumed,
    a_paused_pull_holds_until_resumed_and_a_cancelled_one_ends,
);

/// Waits for the first event `wanted` accepts, within a bound.
async fn wait_for(events: &mut broadcast::Receiver<Event>, wanted: impl Fn(&Event) -> bool) {
    bounded("the event", async {
        loop {
            match events.recv().await {
                Ok(event) if wanted(&event) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("the events ended"),
            }
        }
    })
    .await;
}

/// Sixteen sends cancelled mid-way, one after another, each with its transfer
/// open and holding data: every cancel aborts its transfer, so the key's sixteen
/// open-transfer slots are free again and the seventeenth send succeeds.
async fn cancelled_sends_free_their_slots(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let sender = h.sender();
    let mut server_events = h.server.subscribe();
    let size = 6 * u64::from(CHUNK);
    let mut gates = Vec::new();
    for i in 0..16u64 {
        let mut events = sender.subscribe();
        let (gate, held) = oneshot::channel();
        gates.push(gate);
        // The input stalls after two segments, so the send is mid-way.
        let input = PrngReader::gated(i, size, 2 * u64::from(CHUNK), held);
        let id = format!("cancel-{i}");
        let send = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(input, id.as_bytes(), b"meta").await }
        });
        wait_for(&mut events, |e| matches!(e, Event::Progress { .. })).await;
        sender.cancel();
        let sent = bounded("the cancelled send", send).await.unwrap();
        assert!(matches!(sent, Err(Error::Cancelled)), "{sent:?}");
        wait_for(&mut events, |e| *e == Event::Cancelled).await;
    }
    let open = sender.open_transfers().await.unwrap();
    assert!(open.is_empty(), "cancelled transfers are gone: {open:?}");
    let mut aborted = 0;
    while let Ok(event) = server_events.try_recv() {
        if let ServerEvent::Cancelled { why, .. } = event {
            assert_eq!(why, CancelReason::Aborted);
            aborted += 1;
        }
    }
    assert_eq!(aborted, 16, "the server heard each cancel");
    let receipt = sender
        .send(PrngReader::new(99, size), b"after-cancels", b"meta")
        .await
        .unwrap();
    h.check_receipt(&receipt, b"after-cancels", size).await;
}

/// A send started while its sender is paused opens its transfer and stores
/// nothing; resumed, it completes, byte-identical.
async fn a_paused_send_holds_its_data_until_resumed(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let sender = h.sender();
    let mut events = sender.subscribe();
    assert!(sender.pause());
    assert!(!sender.pause(), "paused already");
    assert!(sender.is_paused());
    let size = 5 * u64::from(CHUNK) + 7;
    let send = tokio::spawn({
        let sender = sender.clone();
        async move {
            sender
                .send(PrngReader::new(7, size), b"paused", b"meta")
                .await
        }
    });
    wait_for(&mut events, |e| matches!(e, Event::Accepted { .. })).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = sender.open_transfers().await.unwrap();
    assert_eq!(open.len(), 1, "the transfer is open: {open:?}");
    assert_eq!(open[0].stored_segments, 0, "nothing is sent while paused");
    assert!(sender.resume());
    assert!(!sender.resume(), "not paused any more");
    let receipt = bounded("the resumed send", send).await.unwrap().unwrap();
    h.check_receipt(&receipt, b"paused", size).await;
    h.check_retrieval(b"paused", 7, size, b"meta").await;
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(seen.contains(&Event::Continued), "{seen:?}");
}

/// A pull opened while its retriever is paused yields nothing until resumed,
/// then the whole batch; a pull cancelled after its first bytes ends with the
/// cancel, not with bad data, and says so in its events.
async fn a_paused_pull_holds_until_resumed_and_a_cancelled_one_ends(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let size = 40 * u64::from(CHUNK) + 3;
    h.sender()
        .send(PrngReader::new(5, size), b"pulled", b"meta")
        .await
        .unwrap();
    let retriever = h.retriever();
    let mut events = retriever.subscribe();
    assert!(retriever.pause());
    let (mut reader, info) = retriever.get(b"pulled").await.unwrap();
    assert_eq!(info.size, size);
    let mut first = [0u8; 1];
    let held = tokio::time::timeout(Duration::from_millis(300), reader.read(&mut first)).await;
    assert!(held.is_err(), "a paused pull yields nothing: {held:?}");
    assert!(retriever.resume());
    assert_content(reader, 5, size).await;
    wait_for(&mut events, |e| {
        *e == Event::Completed { size, segments: 41 }
    })
    .await;

    let (mut reader, _) = retriever.get(b"pulled").await.unwrap();
    let mut some = vec![0u8; CHUNK as usize];
    reader.read_exact(&mut some).await.unwrap();
    retriever.cancel();
    let mut rest = Vec::new();
    let error = bounded("the cancelled pull", reader.read_to_end(&mut rest))
        .await
        .expect_err("a cancelled pull ends in an error");
    assert_eq!(error.kind(), std::io::ErrorKind::Other, "{error}");
    let inner = error.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(matches!(inner, Some(Error::Cancelled)), "{error:?}");
    assert!(
        (rest.len() as u64) < size - u64::from(CHUNK),
        "the pull stopped short"
    );
    wait_for(&mut events, |e| *e == Event::Cancelled).await;
    // A pull after the cancel is not affected by it.
    let (reader, _) = retriever.get(b"pulled").await.unwrap();
    assert_content(reader, 5, size).await;
}
