//! Receipts as files: `mftq send --receipt FILE` writes the server's signed
//! receipt, and `mftq verify-receipt FILE --server-key PUB` checks one offline,
//! the proof of delivery an audit asks for.
//!
//! The file is JSON. Its `signed` field is the receipt exactly as the server
//! signed it (the protocol's encoding, in hex), and that alone is what is verified;
//! the other fields repeat it in readable form, and a file whose readable fields
//! disagree with its signed bytes is refused as tampered.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::args::VerifyReceiptArgs;
use crate::client::parse_key;
use crate::error::{CliError, Exit};
use crate::output::{hex, human, print_json, utc};
use mft::wire::{Codec, Message, Receipt, Signed};

/// What the `schema` field of a receipt file says.
const SCHEMA: &str = "mftq-receipt/1";

/// The readable fields of `receipt`, as a receipt file and `verify-receipt --json`
/// show them.
fn readable(receipt: &Receipt) -> serde_json::Map<String, Value> {
    let fields = json!({
        "batch_id": String::from_utf8_lossy(&receipt.batch_id),
        "sender": hex(&receipt.sender),
        "server": hex(&receipt.server),
        "size": receipt.size,
        "segments": receipt.segment_count,
        "transfer_id": hex(receipt.transfer_id.as_bytes()),
        "chain": hex(receipt.chain.as_bytes()),
        "content_sha256": hex(&receipt.content_digest),
        "completed_unix": receipt.completed_unix,
        "completed_utc": utc(receipt.completed_unix),
        "signature": hex(receipt.signature.as_bytes()),
    });
    match fields {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// Writes `receipt` to `path` as a receipt file (replacing one there).
pub fn write(path: &Path, receipt: &Receipt) -> Result<(), CliError> {
    let signed = Message::Receipt(receipt.clone())
        .to_bytes()
        .map_err(|e| CliError::other(format!("encoding the receipt: {e}")))?;
    let mut doc = serde_json::Map::new();
    doc.insert("schema".into(), json!(SCHEMA));
    doc.extend(readable(receipt));
    doc.insert("signed".into(), json!(hex(&signed)));
    let text = serde_json::to_string_pretty(&Value::Object(doc))
        .map_err(|e| CliError::other(format!("encoding the receipt: {e}")))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| CliError::io(format!("--receipt {}", path.display()), e))
}

/// A receipt file that is not what it claims: exit 5, naming the file.
fn refused(path: &Path, why: impl std::fmt::Display) -> CliError {
    CliError::new(
        Exit::Integrity,
        format!("receipt {}: {why}", path.display()),
    )
}

/// Reads and checks a receipt file against `server`: its signed bytes decode
/// to a receipt the server signed, and every readable field says what they say.
fn read_verified(path: &Path, server: &flow::PeerKey) -> Result<Receipt, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::io(format!("receipt {}", path.display()), e))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| {
        CliError::usage(format!(
            "receipt {}: not a receipt file (not JSON: {e})",
            path.display()
        ))
    })?;
    if doc.get("schema").and_then(Value::as_str) != Some(SCHEMA) {
        return Err(CliError::usage(format!(
            "receipt {}: not a receipt file (no \"schema\": \"{SCHEMA}\")",
            path.display()
        )));
    }
    let signed = doc
        .get("signed")
        .and_then(Value::as_str)
        .and_then(unhex)
        .ok_or_else(|| refused(path, "its \"signed\" field is missing or not hex"))?;
    let receipt = match Message::from_bytes(bytes::Bytes::from(signed)) {
        Ok(Message::Receipt(receipt)) => receipt,
        Ok(other) => return Err(refused(path, format!("it holds a {}", other.name()))),
        Err(e) => {
            return Err(refused(
                path,
                format!("its signed bytes do not decode: {e}"),
            ));
        }
    };
    if receipt.server != *server.as_bytes() {
        return Err(CliError::new(
            Exit::Auth,
            format!(
                "receipt {}: signed by server {}, not by --server-key {server}",
                path.display(),
                hex(&receipt.server)
            ),
        ));
    }
    if !receipt.verify(server.as_bytes()) {
        return Err(refused(path, "the server's signature does not verify"));
    }
    for (field, value) in readable(&receipt) {
        match doc.get(&field) {
            Some(stated) if *stated != value => {
                return Err(refused(
                    path,
                    format!("tampered: {field} says {stated}, the signed receipt says {value}"),
                ));
            }
            _ => {}
        }
    }
    Ok(receipt)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The SHA-256 of the file at `path`.
fn sha256_of(path: &PathBuf) -> Result<[u8; 32], CliError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)
        .map_err(|e| CliError::io(format!("--file {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| CliError::io(format!("--file {}", path.display()), e))?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// `mftq verify-receipt`: checks a receipt file offline, and with `--file` that
/// a local file is the content it receipts.
pub fn verify(args: VerifyReceiptArgs) -> Result<(), CliError> {
    let server = parse_key("--server-key", &args.server_key)?;
    let receipt = read_verified(&args.receipt, &server)?;
    if let Some(path) = &args.file {
        let digest = sha256_of(path)?;
        if receipt.content_digest == [0; 32] {
            return Err(refused(
                &args.receipt,
                "it declares no content SHA-256, so no file can be checked against it",
            ));
        }
        if digest != receipt.content_digest {
            return Err(refused(
                &args.receipt,
                format!(
                    "{} is not the content it receipts (SHA-256 {}, receipted {})",
                    path.display(),
                    hex(&digest),
                    hex(&receipt.content_digest)
                ),
            ));
        }
    }
    if args.json {
        let mut doc = serde_json::Map::new();
        doc.insert("schema".into(), json!("mftq-receipt-check/1"));
        doc.insert("verified".into(), json!(true));
        doc.insert("file_matches".into(), json!(args.file.is_some()));
        doc.extend(readable(&receipt));
        print_json(&Value::Object(doc));
    } else {
        println!(
            "receipt verified: server {} received batch {} ({}) from sender {} at {} UTC",
            hex(&receipt.server),
            String::from_utf8_lossy(&receipt.batch_id),
            human(receipt.size),
            hex(&receipt.sender),
            utc(receipt.completed_unix)
        );
        if let Some(path) = &args.file {
            println!(
                "{} is the content it receipts (SHA-256 matches)",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_receipt(server: &flow::Identity) -> Receipt {
        let mut receipt = Receipt {
            batch_id: mft::wire::BatchId::new(b"audit.csv".to_vec()).expect("a batch id"),
            transfer_id: mft::wire::TransferId([1; 16]),
            sender: [2; 32],
            segment_count: 3,
            size: 9000,
            chain: mft::wire::ChainHash([3; 64]),
            content_digest: [4; 32],
            completed_unix: 1_800_000_000,
            server: *server.public_key().as_bytes(),
            signature: mft::wire::Signature([0; 64]),
        };
        receipt.sign(server).expect("signs");
        receipt
    }

    #[test]
    fn a_written_receipt_verifies_and_any_edit_is_refused() {
        let server = flow::Identity::generate();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("r.json");
        let receipt = signed_receipt(&server);
        write(&path, &receipt).expect("writes");
        assert_eq!(
            read_verified(&path, &server.public_key()).expect("verifies"),
            receipt
        );

        // Another server's key: refused as trust (exit 3).
        let other = flow::Identity::generate().public_key();
        assert_eq!(read_verified(&path, &other).unwrap_err().exit, Exit::Auth);

        let text = std::fs::read_to_string(&path).expect("read");
        // A readable field changed.
        let edited = text.replace("\"size\": 9000", "\"size\": 9001");
        assert_ne!(edited, text);
        std::fs::write(&path, &edited).expect("write");
        let err = read_verified(&path, &server.public_key()).unwrap_err();
        assert_eq!(err.exit, Exit::Integrity);
        assert!(err.message.contains("tampered: size"), "{}", err.message);

        // A signed byte changed: the completion time, the last field before the
        // server key (32 bytes) and the signature (64).
        let doc: Value = serde_json::from_str(&text).expect("json");
        let mut signed = unhex(doc["signed"].as_str().expect("hex")).expect("hex");
        let time = signed.len() - 97;
        signed[time] ^= 1;
        let tampered = text.replace(doc["signed"].as_str().expect("hex"), &hex(&signed));
        std::fs::write(&path, tampered).expect("write");
        let err = read_verified(&path, &server.public_key()).unwrap_err();
        assert_eq!(err.exit, Exit::Integrity);
        assert!(err.message.contains("does not verify"), "{}", err.message);
    }
}
