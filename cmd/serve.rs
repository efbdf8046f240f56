//! `mftq serve`: listen, store batches from authorised senders in the embedded
//! store, serve them back to authorised retrievers, stop gracefully on a signal.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use flow::{Endpoint, Manager, ManagerConfig, PeerKey};

use crate::args::ServeArgs;
use crate::client::load_identity;
use crate::config::{read_allow_list, serve_settings};
use crate::error::{CliError, Exit};

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let settings = serve_settings(args)?;
    let identity = load_identity(&settings.key)?;
    let allow =
        |flag: &str, path: &Option<std::path::PathBuf>| -> Result<HashSet<PeerKey>, CliError> {
            match path {
                Some(p) => read_allow_list(flag, p),
                None => {
                    tracing::warn!("no {flag} file: no key is authorised for it");
                    Ok(HashSet::new())
                }
            }
        };
    let senders = Arc::new(allow("--senders", &settings.senders)?);
    let retrievers = Arc::new(allow("--retrievers", &settings.retrievers)?);

    let mut config = mft::ServerConfig::default();
    if let Some(n) = settings.max_chunk {
        let n =
            u32::try_from(n).map_err(|_| CliError::usage(format!("--max-chunk {n}: too large")))?;
        config
            .max_chunk_size(n)
            .map_err(|e| CliError::usage(format!("--max-chunk: {e}")))?;
    }
    if let Some(n) = settings.max_metadata {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        config.max_metadata(n);
    }
    if let Some(n) = settings.max_transfers_per_key {
        config.max_open_transfers_per_peer(n);
    }

    let data = settings.data.clone();
    let store = tokio::task::spawn_blocking(move || mft::store::FsStore::open(&data))
        .await
        .map_err(|e| CliError::other(format!("opening the store: {e}")))?
        .map_err(|e| {
            CliError::new(
                Exit::Usage,
                format!(
                    "--data {}: cannot open the store: {e}",
                    settings.data.display()
                ),
            )
        })?;

    let manager = Manager::new(
        identity.clone(),
        settings.tuning.registry(),
        ManagerConfig::default(),
    )
    .map_err(|e| CliError::flow("starting the server", e))?;
    let mut endpoints = Vec::new();
    for spec in &settings.listen {
        let endpoint: Endpoint = spec.parse().map_err(|e: flow::Error| {
            CliError::usage(format!("--listen {spec:?}: {}", e.reason()))
        })?;
        if endpoint.protocol().is_empty() {
            return Err(CliError::usage(format!(
                "--listen {spec:?}: expected protocol/address, e.g. quic/0.0.0.0:4433"
            )));
        }
        let handle = manager
            .listen(endpoint.protocol(), endpoint.address())
            .await
            .map_err(|e| CliError::flow(&format!("--listen {spec}"), e))?;
        endpoints.push(handle);
    }

    let server = mft::Server::builder(identity.clone(), Arc::new(store))
        .config(config)
        .authorize(move |request: &mft::Request<'_>| match request.direction {
            mft::Direction::Send => senders.contains(request.key),
            mft::Direction::Retrieve => retrievers.contains(request.key),
        })
        .build();
    let serving = tokio::spawn({
        let server = server.clone();
        let manager = manager.clone();
        async move { server.serve(manager).await }
    });

    for handle in &endpoints {
        println!("listening on {}", handle.endpoint());
    }
    println!("public key {}", identity.public_key());
    tracing::info!(
        store = %settings.data.display(),
        key = %identity.public_key(),
        "serving"
    );

    shutdown_signal().await?;
    drop(endpoints);
    // The library stops accepting, lets open flows finish within the grace period,
    // then closes; the extra seconds bound the wait for it to return.
    let grace = Duration::from_secs(settings.grace);
    server.shutdown(grace);
    let _ = tokio::time::timeout(grace + Duration::from_secs(2), serving).await;
    eprintln!("mftq: stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() -> Result<(), CliError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| CliError::other(format!("installing the SIGTERM handler: {e}")))?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(|e| CliError::other(format!("waiting for SIGINT: {e}"))),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| CliError::other(format!("waiting for Ctrl-C: {e}")))
    }
}
