//! `mftq serve`: listen, store batches from authorised senders in the embedded
//! store, serve them back to authorised retrievers, stop gracefully on a signal.

use std::sync::Arc;
use std::time::Duration;

use flow::{Authorizer, Endpoint, Manager, ManagerConfig};

use crate::access::Access;
use crate::args::ServeArgs;
use crate::client::load_identity;
use crate::config::serve_settings;
use crate::error::{CliError, Exit};

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let settings = serve_settings(args)?;
    let identity = load_identity(&settings.key)?;
    let access = Access::load(settings.senders.clone(), settings.retrievers.clone())?;

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
    config.compression(settings.compression);
    if let Some(n) = settings.max_open_bytes_per_key {
        config.max_open_bytes_per_peer(n);
    }
    if let Some(n) = settings.max_bytes_per_key {
        config.max_bytes_per_peer(n);
    }
    let mut limits = flow::ListenLimits::default();
    if let Some(n) = settings.max_connections {
        limits.max_connections(n);
    }
    if let Some(n) = settings.max_connections_per_source {
        limits.max_connections_per_source(n);
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

    // Trust at the door: the TLS handshake refuses every key on neither list.
    let mut manager_config = ManagerConfig::default();
    manager_config.accept_authorizer(Authorizer::from_fn({
        let access = access.clone();
        move |key| access.admits(key)
    }));
    let manager = Manager::new(
        identity.clone(),
        settings.tuning.registry_with(&limits),
        manager_config,
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
        .authorize({
            let access = access.clone();
            move |request: &mft::Request<'_>| access.allows(request)
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

    serve_until_stopped(&access, &server, &manager).await?;
    drop(endpoints);
    // The library stops accepting, lets open flows finish within the grace period,
    // then closes; the extra seconds bound the wait for it to return.
    let grace = Duration::from_secs(settings.grace);
    server.shutdown(grace);
    let _ = tokio::time::timeout(grace + Duration::from_secs(2), serving).await;
    // A log line, so `--log-format json` logs hold nothing but JSON.
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGINT or SIGTERM; on SIGHUP (Unix) reloads the allow-lists and
/// shuts out the keys they no longer name.
async fn serve_until_stopped(
    access: &Access,
    server: &mft::Server,
    manager: &Manager,
) -> Result<(), CliError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())
            .map_err(|e| CliError::other(format!("installing the SIGHUP handler: {e}")))?;
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                stopped = &mut stop => return stopped,
                _ = hup.recv() => reload(access, server, manager).await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (access, server, manager);
        shutdown_signal().await
    }
}

/// Re-reads the allow-lists. Keys no longer on either list lose their
/// connections and their open transfers at once; a list that does not parse
/// changes nothing and is reported.
async fn reload(access: &Access, server: &mft::Server, manager: &Manager) {
    let removed = match access.reload() {
        Ok(removed) => removed,
        Err(e) => {
            tracing::error!(error = %e.message, "allow-lists not reloaded; the old ones stay");
            return;
        }
    };
    tracing::info!(removed = removed.len(), "allow-lists reloaded");
    for conn in manager.connections() {
        if removed.contains(&conn.remote_identity()) {
            conn.close();
        }
    }
    for key in &removed {
        match server.abort_transfers_of(key).await {
            Ok(n) => tracing::info!(%key, aborted = n, "key removed"),
            Err(e) => tracing::error!(%key, error = %e, "aborting the removed key's transfers"),
        }
    }
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
