//! The server's state machine driven by arbitrary message sequences over the
//! in-process protocol: the input is cut into flows and messages, each flow's
//! messages are written in order, and the server's answers are read until it
//! ends the flow. Whatever arrives, the server answers or ends the flow and keeps
//! serving: the last flow is always a valid listing, which must be answered.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mft::wire::{Codec, List, Message};

/// One runtime and one server for the whole run, as a long-lived server has.
struct World {
    runtime: tokio::runtime::Runtime,
    client: flow::Manager,
    endpoint: flow::Endpoint,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let (client, endpoint) = runtime.block_on(async {
            let network = flow::MemProtocol::new();
            let registry = || {
                let mut registry = flow::Registry::default();
                registry.register("mem", Arc::new(network.clone()), &[]);
                registry
            };
            let identity = flow::Identity::generate();
            let manager =
                flow::Manager::new(identity.clone(), registry(), flow::ManagerConfig::default())
                    .expect("a manager");
            let endpoint = manager
                .listen("mem", "fuzzed-server")
                .await
                .expect("listens")
                .endpoint()
                .clone();
            let mut config = mft::ServerConfig::default();
            config
                .first_message_timeout(Duration::from_millis(50))
                .flow_idle_timeout(Duration::from_millis(50));
            let server = mft::Server::builder(identity, Arc::new(mft::store::MemoryStore::new()))
                .config(config)
                .authorize(|_: &mft::Request<'_>| true)
                .build();
            tokio::spawn(async move { server.serve(manager).await });
            let client = flow::Manager::new(
                flow::Identity::generate(),
                registry(),
                flow::ManagerConfig::default(),
            )
            .expect("a client");
            (client, endpoint)
        });
        World {
            runtime,
            client,
            endpoint,
        }
    })
}

/// Cuts `data` into flows (a 0xff byte between them) of messages (each a u8
/// length, then that many bytes; a real prefix is added when sent).
fn flows(data: &[u8]) -> Vec<Vec<&[u8]>> {
    data.split(|&b| b == 0xff)
        .take(8)
        .map(|mut flow| {
            let mut messages = Vec::new();
            while let Some((&len, rest)) = flow.split_first() {
                let len = usize::from(len).min(rest.len());
                messages.push(&rest[..len]);
                flow = &rest[len..];
            }
            messages
        })
        .collect()
}

async fn run_flow(w: &World, messages: &[&[u8]]) -> Option<Vec<Message>> {
    let flow = w
        .client
        .dial(&w.endpoint, flow::Authorizer::any(), Duration::from_secs(5))
        .await
        .ok()?;
    let (mut reader, mut writer) = flow.into_split();
    for m in messages {
        if writer.write_msg(&[m]).await.is_err() {
            break;
        }
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut writer).await;
    let mut answers = Vec::new();
    while let Ok(Ok(Some(bytes))) =
        tokio::time::timeout(Duration::from_millis(500), reader.read_msg()).await
    {
        answers.push(Message::from_bytes(bytes).expect("the server sends valid messages"));
    }
    Some(answers)
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.runtime.block_on(async {
        for messages in flows(data) {
            let _ = run_flow(w, &messages).await;
        }
        // The server still serves.
        let list = Message::List(List {
            owner: None,
            after: None,
            limit: 10,
            voucher: Default::default(),
        })
        .to_bytes()
        .expect("encodes");
        let answers = run_flow(w, &[&list])
            .await
            .expect("the server is reachable");
        assert!(
            matches!(answers.first(), Some(Message::Listing(_))),
            "a listing after fuzzed flows: {answers:?}"
        );
    });
});
