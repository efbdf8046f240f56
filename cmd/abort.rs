//! `mftq transfers`, `mftq abort` and `mftq rm`: what this key left open on a
//! server, ending one of those transfers at once (the server deletes what it
//! holds), and deleting a stored batch.

use serde_json::json;

use crate::args::{AbortArgs, RmArgs, TransfersArgs};
use crate::client::Client;
use crate::client::parse_key;
use crate::error::CliError;
use crate::output::{hex, human, print_json, utc};

/// Lists this key's open transfers as a table (or JSON).
pub async fn list(args: TransfersArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client, Default::default(), "--to", args.to.as_deref()).await?;
    let sender = mft::Sender::new(client.manager.clone(), client.config.clone())
        .map_err(|e| CliError::mft("configuring the sender", e))?;
    let open = sender.open_transfers().await;
    client.manager.close();
    let open = open.map_err(|e| CliError::mft("listing open transfers", e))?;
    if args.client.json {
        let list: Vec<_> = open
            .iter()
            .map(|o| {
                json!({
                    "batch_id": String::from_utf8_lossy(&o.batch_id),
                    "transfer_id": hex(o.transfer_id.as_bytes()),
                    "stored_segments": o.stored_segments,
                    "stored_bytes": o.stored_bytes,
                    "created_unix": o.created_unix,
                    "deadline_unix": o.deadline_unix,
                })
            })
            .collect();
        print_json(&json!({ "schema": "mftq-transfers/1", "transfers": list }));
        return Ok(());
    }
    if open.is_empty() {
        crate::output::notice("no open transfers for this key");
        return Ok(());
    }
    println!(
        "{:<40}  {:>10}  {:>8}  {:<20}  reclaimed after (UTC)",
        "batch", "held", "segments", "opened (UTC)"
    );
    for o in &open {
        println!(
            "{:<40}  {:>10}  {:>8}  {:<20}  {}",
            String::from_utf8_lossy(&o.batch_id),
            human(o.stored_bytes),
            o.stored_segments,
            utc(o.created_unix),
            utc(o.deadline_unix),
        );
    }
    Ok(())
}

/// Aborts this key's open transfer of `args.batch_id`.
pub async fn run(args: AbortArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client, Default::default(), "--to", args.to.as_deref()).await?;
    let sender = mft::Sender::new(client.manager.clone(), client.config.clone())
        .map_err(|e| CliError::mft("configuring the sender", e))?;
    let outcome = abort_batch(&sender, args.batch_id.as_bytes()).await;
    client.manager.close();
    let held = outcome?;
    let held = held.ok_or_else(|| {
        CliError::other(format!(
            "no open transfer of batch {:?} for this key",
            args.batch_id
        ))
    })?;
    if args.client.json {
        print_json(&json!({
            "schema": "mftq-abort/1",
            "batch_id": args.batch_id,
            "deleted_bytes": held,
        }));
    } else {
        println!(
            "aborted batch {}: the server deleted the {} it held",
            args.batch_id,
            human(held)
        );
    }
    Ok(())
}

/// Aborts the open transfer of `batch_id`: the bytes the server held, or `None`
/// if this key has none open for it.
pub async fn abort_batch(sender: &mft::Sender, batch_id: &[u8]) -> Result<Option<u64>, CliError> {
    let open = sender
        .open_transfers()
        .await
        .map_err(|e| CliError::mft("listing open transfers", e))?;
    let Some(entry) = open.into_iter().find(|o| &o.batch_id[..] == batch_id) else {
        return Ok(None);
    };
    sender
        .abort(entry.transfer_id)
        .await
        .map_err(|e| CliError::mft("aborting the transfer", e))?;
    Ok(Some(entry.stored_bytes))
}

/// Deletes the batch `args.batch_id` (of `--sender`, or this key's).
pub async fn remove(args: RmArgs) -> Result<(), CliError> {
    let owner = args
        .sender
        .as_deref()
        .map(|text| parse_key("--sender", text))
        .transpose()?;
    let client = Client::new(&args.client, Default::default(), "--to", args.to.as_deref()).await?;
    let sender = mft::Sender::new(client.manager.clone(), client.config.clone())
        .map_err(|e| CliError::mft("configuring the sender", e))?;
    let id = args.batch_id.as_bytes();
    let outcome = match &owner {
        Some(owner) => sender.delete_from(owner, id).await,
        None => sender.delete(id).await,
    };
    client.manager.close();
    let freed = outcome.map_err(|e| {
        let missing = e.refuse_code() == Some(mft::wire::RefuseCode::NotFound);
        let mut err = CliError::mft(&format!("deleting batch {:?}", args.batch_id), e);
        if missing {
            err.exit = crate::error::Exit::Usage;
        }
        err
    })?;
    if args.client.json {
        print_json(&json!({
            "schema": "mftq-rm/1",
            "batch_id": args.batch_id,
            "deleted": true,
            "size": freed,
        }));
    } else {
        println!("deleted batch {} ({})", args.batch_id, human(freed));
    }
    Ok(())
}
