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
    a_restarted_send_goes_on_over_a_new_connection_without_a_retry,
    a_restarted_pull_goes_on_over_a_new_connection_without_a_retry,
    a_pull_whose_connection_is_lost_pulls_the_rest,
    a_send_cancelled_before_it_runs_sends_nothing,
);

/// The client's live connection to the server (there is one).
fn the_connection(h: &Harness) -> flow::ManagedConn {
    let conns = h.client.connections();
    assert_eq!(conns.len(), 1, "one connection to the server");
    conns[0].clone()
}

/// A config that gives up at the first failure: whatever succeeds did not
/// spend a retry.
fn no_retries(h: &Harness) -> mft::ClientConfig {
    let mut config = h.config();
    config.retries(0);
    config
}

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

/// Waits for the first server event `wanted` accepts, within a bound.
async fn wait_for_server(
    events: &mut broadcast::Receiver<ServerEvent>,
    wanted: impl Fn(&ServerEvent) -> bool,
) -> ServerEvent {
    bounded("the server's event", async {
        loop {
            match events.recv().await {
                Ok(event) if wanted(&event) => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("the events ended"),
            }
        }
    })
    .await
}

/// Sixteen sends cancelled mid-way, one after another, each with its transfer
/// open and holding data: every cancel aborts its transfer, so the key's sixteen
/// open-transfer slots are free again and the seventeenth send succeeds.
async fn cancelled_sends_free_their_slots(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let mut server_events = h.server.subscribe();
    let size = 6 * u64::from(CHUNK);
    let mut gates = Vec::new();
    for i in 0..16u64 {
        // A sender each, so no event of the last send is taken for this one's.
        let sender = h.sender();
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
    let sender = h.sender();
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
/// nothing; resumed, it completes, byte-identical. The server hears of the
/// pause and of the resume, for that transfer.
async fn a_paused_send_holds_its_data_until_resumed(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let mut server_events = h.server.subscribe();
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
    let me = *h.client.identity().public_key().as_bytes();
    let transfer = open[0].transfer_id;
    let paused = wait_for_server(&mut server_events, |e| {
        matches!(
            e,
            ServerEvent::Paused { .. } | ServerEvent::Continued { .. }
        )
    })
    .await;
    assert!(
        matches!(paused, ServerEvent::Paused { peer, transfer: t, .. } if *peer.as_bytes() == me && t == transfer),
        "{paused:?}"
    );
    assert!(sender.resume());
    assert!(!sender.resume(), "not paused any more");
    let continued = wait_for_server(&mut server_events, |e| {
        matches!(
            e,
            ServerEvent::Paused { .. } | ServerEvent::Continued { .. }
        )
    })
    .await;
    assert!(
        matches!(continued, ServerEvent::Continued { transfer: t, .. } if t == transfer),
        "{continued:?}"
    );
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
/// cancel, not with bad data, and says so in its events, as the server does in
/// its own.
async fn a_paused_pull_holds_until_resumed_and_a_cancelled_one_ends(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let mut server_events = h.server.subscribe();
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

    // Larger than any transport's flow window, so the server is still
    // sending when the retriever goes away.
    let big = 320 * u64::from(CHUNK);
    h.sender()
        .send(PrngReader::new(6, big), b"pulled-big", b"meta")
        .await
        .unwrap();
    let (mut reader, _) = retriever.get(b"pulled-big").await.unwrap();
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
        (rest.len() as u64) < big - u64::from(CHUNK),
        "the pull stopped short"
    );
    wait_for(&mut events, |e| *e == Event::Cancelled).await;
    let stopped = wait_for_server(&mut server_events, |e| {
        matches!(e, ServerEvent::RetrievalStopped { .. })
    })
    .await;
    assert!(
        matches!(stopped, ServerEvent::RetrievalStopped { segments, wanted: 320, .. } if segments < 320),
        "{stopped:?}"
    );
    // A pull after the cancel is not affected by it.
    let (reader, _) = retriever.get(b"pulled").await.unwrap();
    assert_content(reader, 5, size).await;
}

/// A send restarted mid-way closes its connection and goes on over a new one:
/// it completes with no retries allowed, so the restart cost none.
async fn a_restarted_send_goes_on_over_a_new_connection_without_a_retry(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let sender = mft::Sender::new(h.client.clone(), no_retries(&h)).unwrap();
    let mut events = sender.subscribe();
    let size = 8 * u64::from(CHUNK) + 9;
    let (gate, held) = oneshot::channel();
    let input = PrngReader::gated(11, size, 3 * u64::from(CHUNK), held);
    let send = tokio::spawn({
        let sender = sender.clone();
        async move { sender.send(input, b"restarted", b"meta").await }
    });
    wait_for(&mut events, |e| matches!(e, Event::Progress { .. })).await;
    let old = the_connection(&h);
    sender.restart();
    wait_for(&mut events, |e| *e == Event::Reconnecting).await;
    assert!(old.is_closed(), "the old connection is closed");
    let _ = gate.send(());
    let receipt = bounded("the restarted send", send).await.unwrap().unwrap();
    h.check_receipt(&receipt, b"restarted", size).await;
    h.check_retrieval(b"restarted", 11, size, b"meta").await;
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Retrying { .. })),
        "no retry spent: {seen:?}"
    );
}

/// A pull restarted after its first bytes closes its connection and asks for
/// the rest over a new one; its reader goes on to the end, byte for byte, with
/// no retries allowed.
async fn a_restarted_pull_goes_on_over_a_new_connection_without_a_retry(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let size = 40 * u64::from(CHUNK) + 3;
    h.sender()
        .send(PrngReader::new(13, size), b"pulled", b"meta")
        .await
        .unwrap();
    let retriever = mft::Retriever::new(h.client.clone(), no_retries(&h)).unwrap();
    let mut events = retriever.subscribe();
    let (mut reader, _) = retriever.get(b"pulled").await.unwrap();
    let mut first = vec![0u8; 2 * CHUNK as usize];
    reader.read_exact(&mut first).await.unwrap();
    let old = the_connection(&h);
    retriever.restart();
    let mut rest = Vec::new();
    bounded("the rest", reader.read_to_end(&mut rest))
        .await
        .expect("the restarted pull goes on");
    assert!(old.is_closed(), "the old connection is closed");
    assert!(
        [first, rest].concat() == data_of(13, size),
        "the pull comes back whole"
    );
    wait_for(&mut events, |e| matches!(e, Event::Completed { .. })).await;
}

/// A pull whose connection is lost part way (closed under it) retries, asks
/// for the rest from the next segment, and its reader never notices.
async fn a_pull_whose_connection_is_lost_pulls_the_rest(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let size = 40 * u64::from(CHUNK) + 3;
    h.sender()
        .send(PrngReader::new(17, size), b"lost", b"meta")
        .await
        .unwrap();
    let retriever = h.retriever();
    let mut events = retriever.subscribe();
    let (mut reader, _) = retriever.get(b"lost").await.unwrap();
    let mut first = vec![0u8; CHUNK as usize];
    reader.read_exact(&mut first).await.unwrap();
    the_connection(&h).close();
    let mut rest = Vec::new();
    bounded("the rest", reader.read_to_end(&mut rest))
        .await
        .expect("the pull goes on after its connection is lost");
    assert!(
        [first, rest].concat() == data_of(17, size),
        "the pull comes back whole"
    );
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        seen.iter().any(|e| matches!(e, Event::Retrying { .. })),
        "the loss was retried: {seen:?}"
    );
}

/// The `len` bytes of the stream of `seed`.
fn data_of(seed: u64, len: u64) -> Vec<u8> {
    data(seed, len as usize)
}

/// A send is subject to cancel from the call that makes its future: cancelled
/// before it is first polled, it ends at once and opens nothing on the server;
/// a send made after the cancel runs.
async fn a_send_cancelled_before_it_runs_sends_nothing(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let sender = h.sender();
    let size = 3 * u64::from(CHUNK);
    let send = sender.send(PrngReader::new(21, size), b"never", b"meta");
    sender.cancel();
    let later = sender.send(PrngReader::new(22, size), b"later", b"meta");
    assert!(matches!(send.await, Err(Error::Cancelled)));
    assert!(sender.open_transfers().await.unwrap().is_empty());
    h.assert_no_batch(b"never").await;
    let receipt = later.await.unwrap();
    h.check_receipt(&receipt, b"later", size).await;
}
