//! The formats of the server's files: the TOML config file and the allow-lists.
//! Pure parsing, with no other module of the binary, so the fuzz target
//! `config_files` (fuzz/) reaches exactly what `mftq serve` runs.

use std::collections::HashSet;
use std::path::PathBuf;

use flow::PeerKey;
use serde::Deserialize;

/// A size in a config file: a number of bytes or a string such as `"4MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Size {
    Bytes(u64),
    Text(String),
}

/// The config file, every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    pub(crate) listen: Option<Vec<String>>,
    pub(crate) data: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) senders: Option<PathBuf>,
    pub(crate) retrievers: Option<PathBuf>,
    pub(crate) max_chunk: Option<Size>,
    pub(crate) max_metadata: Option<Size>,
    pub(crate) max_transfers_per_key: Option<usize>,
    pub(crate) max_open_bytes_per_key: Option<Size>,
    pub(crate) max_bytes_per_key: Option<Size>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_source: Option<usize>,
    pub(crate) grace: Option<u64>,
    pub(crate) compression: Option<bool>,
    pub(crate) congestion: Option<String>,
    pub(crate) rate: Option<String>,
}

/// Parses a config file's text; unknown fields are errors.
pub(crate) fn parse_config(text: &str) -> Result<File, toml::de::Error> {
    toml::from_str(text)
}

/// Parses allow-list text; an error carries the 1-based line number.
pub fn parse_allow_list(text: &str) -> Result<HashSet<PeerKey>, (usize, String)> {
    let mut keys = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or_default();
        let key: PeerKey = word
            .parse()
            .map_err(|e: flow::Error| (i + 1, e.reason().to_string()))?;
        keys.insert(key);
    }
    Ok(keys)
}
