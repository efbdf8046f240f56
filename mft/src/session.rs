//! Moving protocol messages over flows: the only place client and server touch I/O
//! for control messages.

use std::time::Duration;

use flow::{FlowReader, FlowWriter};

use crate::error::{Error, Result};
use crate::wire::{Codec, Kind, Message, Refuse};

/// Sends one message.
pub(crate) async fn send(writer: &mut FlowWriter, message: &Message) -> Result<()> {
    writer.write_msg(&[&message.to_bytes()?]).await?;
    Ok(())
}

/// Receives one message; a clean end of the flow is `None`. A [`Refuse`] becomes
/// [`Error::Refused`].
pub(crate) async fn recv_opt(reader: &mut FlowReader) -> Result<Option<Message>> {
    let Some(bytes) = reader.read_msg().await? else {
        return Ok(None);
    };
    match Message::from_bytes(bytes)? {
        Message::Refuse(refuse) => Err(refused(refuse)),
        other => Ok(Some(other)),
    }
}

/// Receives one message of kind `K` and returns its body; the flow ending first,
/// or another message, is a protocol error.
pub(crate) async fn recv<K: Kind>(reader: &mut FlowReader, _kind: K) -> Result<K::Body> {
    let message = recv_opt(reader)
        .await?
        .ok_or_else(|| Error::Protocol(format!("the flow ended before {}", K::NAME)))?;
    K::take(message).map_err(|other| unexpected(K::NAME, &other))
}

/// Sends `message` and receives the answer, of kind `K`. A write that fails
/// because the peer refused and closed early reports the refusal, not the broken
/// write.
pub(crate) async fn request<K: Kind>(
    reader: &mut FlowReader,
    writer: &mut FlowWriter,
    message: &Message,
    kind: K,
) -> Result<K::Body> {
    if let Err(e) = send(writer, message).await {
        return Err(pending_refusal(reader).await.unwrap_or(e));
    }
    recv(reader, kind).await
}

/// After a failed write: the refusal the peer sent before closing, if one is there.
pub(crate) async fn pending_refusal(reader: &mut FlowReader) -> Option<Error> {
    match tokio::time::timeout(Duration::from_secs(1), recv_opt(reader)).await {
        Ok(Err(e @ Error::Refused { .. })) => Some(e),
        _ => None,
    }
}

/// The error for a refusal the peer sent.
pub(crate) fn refused(refuse: Refuse) -> Error {
    Error::Refused {
        code: refuse.code,
        message: refuse.message,
        retry_after: (refuse.retry_after_ms > 0)
            .then(|| Duration::from_millis(u64::from(refuse.retry_after_ms))),
    }
}

/// The error for an unexpected message.
pub(crate) fn unexpected(expected: &'static str, got: &Message) -> Error {
    Error::Protocol(format!("expected {expected}, got {}", got.name()))
}
