//! `mftq list`: the batches this key may see, in every sender's namespace it may
//! list (or one, with `--sender`).

use serde_json::json;

use crate::args::ListArgs;
use crate::client::{Client, parse_key};
use crate::error::CliError;
use crate::output::{human, metadata_json, metadata_summary, print_json, utc};

/// Lists the batches as a table (or JSON).
pub async fn run(args: ListArgs) -> Result<(), CliError> {
    if args.open {
        let transfers = crate::args::TransfersArgs {
            to: args.from,
            client: args.client,
        };
        return crate::abort::list(transfers).await;
    }
    let sender = args
        .sender
        .as_deref()
        .map(|text| parse_key("--sender", text))
        .transpose()?;
    let client = Client::new(
        &args.client,
        Default::default(),
        "--from",
        args.from.as_deref(),
    )
    .await?;
    let retriever = mft::Retriever::new(client.manager.clone(), client.config.clone())
        .map_err(|e| CliError::mft("configuring the retriever", e))?;
    let batches = match &sender {
        Some(sender) => retriever.list_from(sender).await,
        None => retriever.list().await,
    };
    client.manager.close();
    let batches = batches.map_err(|e| CliError::mft("listing batches", e))?;

    if args.client.json {
        let list: Vec<_> = batches
            .iter()
            .map(|b| {
                json!({
                    "batch_id": String::from_utf8_lossy(&b.batch_id),
                    "size": b.size,
                    "segments": b.segment_count,
                    "sender": b.sender.to_string(),
                    "completed_unix": b.completed_unix,
                    "metadata": metadata_json(&b.metadata),
                })
            })
            .collect();
        print_json(&json!({ "schema": "mftq-list/1", "batches": list }));
        return Ok(());
    }
    if batches.is_empty() {
        crate::output::notice("no batches this key may see");
        return Ok(());
    }
    let width = batches
        .iter()
        .map(|b| String::from_utf8_lossy(&b.batch_id).chars().count())
        .max()
        .unwrap_or(0)
        .clamp(8, 40);
    println!(
        "{:<width$}  {:>10}  {:>8}  {:<20}  {:<16}  metadata",
        "batch", "size", "segments", "completed (UTC)", "sender"
    );
    for b in &batches {
        let sender = b.sender.to_string();
        println!(
            "{:<width$}  {:>10}  {:>8}  {:<20}  {:<16}  {}",
            String::from_utf8_lossy(&b.batch_id),
            human(b.size),
            b.segment_count,
            utc(b.completed_unix),
            &sender[..16.min(sender.len())],
            metadata_summary(&b.metadata, 60),
        );
    }
    Ok(())
}
