//! The server's settings: a TOML config file merged with flags, and allow-list files
//! (their formats, pure parsing a fuzz target reaches, are in `config_file.rs`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use flow::PeerKey;

use crate::args::{ServeArgs, parse_congestion, parse_rate, parse_size};
pub use crate::config_file::parse_allow_list;
use crate::config_file::{File, Size};
use crate::error::CliError;
use crate::tuning::Tuning;

/// The listeners used when neither flags nor the config file name any.
pub const DEFAULT_LISTEN: [&str; 2] = ["quic/0.0.0.0:4433", "https/0.0.0.0:4433"];

/// The server's settings after merging.
#[derive(Debug, PartialEq)]
pub struct ServeSettings {
    /// `protocol/address` for each listener.
    pub listen: Vec<String>,
    /// The store directory.
    pub data: PathBuf,
    /// The private key file.
    pub key: PathBuf,
    /// The senders' allow-list file.
    pub senders: Option<PathBuf>,
    /// The retrievers' allow-list file.
    pub retrievers: Option<PathBuf>,
    /// Largest chunk.
    pub max_chunk: Option<u64>,
    /// Largest metadata.
    pub max_metadata: Option<u64>,
    /// Open transfers per key.
    pub max_transfers_per_key: Option<usize>,
    /// Bytes in open transfers per key.
    pub max_open_bytes_per_key: Option<u64>,
    /// Bytes held in all per key.
    pub max_bytes_per_key: Option<u64>,
    /// Connections per listener.
    pub max_connections: Option<usize>,
    /// Connections per source address, per listener.
    pub max_connections_per_source: Option<usize>,
    /// Seconds for open flows to finish at shutdown.
    pub grace: u64,
    /// Whether transfers may settle on compression.
    pub compression: bool,
    /// The transport tuning.
    pub tuning: Tuning,
}

/// Merges the config file (if any) with the flags, which win.
pub fn serve_settings(args: ServeArgs) -> Result<ServeSettings, CliError> {
    let (file, base) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::io(format!("--config {}", path.display()), e))?;
            let file: File = crate::config_file::parse_config(&text).map_err(|e| {
                CliError::usage(format!(
                    "--config {}: {}",
                    path.display(),
                    e.to_string().trim_end()
                ))
            })?;
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (file, base)
        }
        None => (File::default(), PathBuf::new()),
    };
    // Paths in the file are relative to the file.
    let rel = |p: Option<PathBuf>| p.map(|p| base.join(p));
    let size = |flag: Option<u64>, from_file: Option<Size>, name: &str| -> Result<_, CliError> {
        if flag.is_some() {
            return Ok(flag);
        }
        match from_file {
            None => Ok(None),
            Some(Size::Bytes(n)) => Ok(Some(n)),
            Some(Size::Text(t)) => parse_size(&t)
                .map(Some)
                .map_err(|e| CliError::usage(format!("config {name}: {e}"))),
        }
    };
    let listen = if !args.listen.is_empty() {
        args.listen
    } else if let Some(listen) = file.listen.filter(|l| !l.is_empty()) {
        listen
    } else {
        DEFAULT_LISTEN.iter().map(|s| s.to_string()).collect()
    };
    let data = args
        .data
        .or(rel(file.data))
        .ok_or_else(|| CliError::usage("--data DIR is required (or `data` in the config file)"))?;
    let key = args.key.or(rel(file.key)).ok_or_else(|| {
        CliError::usage(
            "--key FILE is required (or `key` in the config file); make one with `mftq keygen`",
        )
    })?;
    // A flag wins; else the file's text, parsed as the flag's would be.
    fn flag_or_file<T>(
        flag: Option<T>,
        from_file: Option<String>,
        name: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, CliError> {
        match (flag, from_file) {
            (Some(flag), _) => Ok(Some(flag)),
            (None, Some(text)) => parse(&text)
                .map(Some)
                .map_err(|e| CliError::usage(format!("config {name}: {e}"))),
            (None, None) => Ok(None),
        }
    }
    let congestion = flag_or_file(
        args.tuning.congestion,
        file.congestion,
        "congestion",
        parse_congestion,
    )?;
    let rate = flag_or_file(args.tuning.rate, file.rate, "rate", parse_rate)?;
    Ok(ServeSettings {
        tuning: Tuning { congestion, rate },
        listen,
        data,
        key,
        senders: args.senders.or(rel(file.senders)),
        retrievers: args.retrievers.or(rel(file.retrievers)),
        max_chunk: size(args.max_chunk, file.max_chunk, "max_chunk")?,
        max_metadata: size(args.max_metadata, file.max_metadata, "max_metadata")?,
        max_transfers_per_key: args.max_transfers_per_key.or(file.max_transfers_per_key),
        max_open_bytes_per_key: size(
            args.max_open_bytes_per_key,
            file.max_open_bytes_per_key,
            "max_open_bytes_per_key",
        )?,
        max_bytes_per_key: size(
            args.max_bytes_per_key,
            file.max_bytes_per_key,
            "max_bytes_per_key",
        )?,
        max_connections: args.max_connections.or(file.max_connections),
        max_connections_per_source: args
            .max_connections_per_source
            .or(file.max_connections_per_source),
        grace: args.grace.or(file.grace).unwrap_or(5),
        compression: !args.no_compression && file.compression.unwrap_or(true),
    })
}

/// Reads an allow-list file: one public key (64 hex digits) per line, optionally
/// followed by whitespace and a comment; `#` lines and blank lines are ignored.
pub fn read_allow_list(flag: &str, path: &Path) -> Result<HashSet<PeerKey>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::io(format!("{flag} {}", path.display()), e))?;
    parse_allow_list(&text).map_err(|(line, why)| {
        CliError::usage(format!("{flag} {} line {line}: {why}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_take_comments_and_name_bad_lines() {
        let a = flow::Identity::generate().public_key();
        let b = flow::Identity::generate().public_key();
        let text = format!("# senders\n\n{a}  alice's laptop\n  {b}\n");
        let keys = parse_allow_list(&text).expect("parses");
        assert_eq!(keys, HashSet::from([a, b]));
        let err = parse_allow_list(&format!("{a}\n\nnot-a-key\n")).expect_err("bad line");
        assert_eq!(err.0, 3);
    }

    fn args(config: Option<PathBuf>) -> ServeArgs {
        ServeArgs {
            config,
            listen: vec![],
            data: None,
            key: None,
            senders: None,
            retrievers: None,
            max_chunk: None,
            max_metadata: None,
            max_transfers_per_key: None,
            max_open_bytes_per_key: None,
            max_bytes_per_key: None,
            max_connections: None,
            max_connections_per_source: None,
            grace: None,
            no_compression: false,
            tuning: Default::default(),
        }
    }

    #[test]
    fn config_file_and_flags_merge() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mftq.toml");
        std::fs::write(
            &path,
            "listen = [\"quic/127.0.0.1:0\"]\ndata = \"d\"\nkey = \"k.key\"\nmax_chunk = \"2MiB\"\nmax_metadata = 1000\ncongestion = \"bbr\"\nrate = \"200Mbit\"\nmax_bytes_per_key = \"1GiB\"\nmax_connections_per_source = 8\n",
        )
        .expect("write");
        let mut a = args(Some(path.clone()));
        a.key = Some("flag.key".into());
        let s = serve_settings(a).expect("merges");
        assert_eq!(s.listen, vec!["quic/127.0.0.1:0".to_string()]);
        assert_eq!(s.data, dir.path().join("d"));
        assert_eq!(s.key, PathBuf::from("flag.key"));
        assert_eq!((s.max_chunk, s.max_metadata), (Some(2 << 20), Some(1000)));
        assert_eq!(s.max_bytes_per_key, Some(1 << 30));
        assert_eq!(s.max_connections_per_source, Some(8));
        assert_eq!((s.max_open_bytes_per_key, s.max_connections), (None, None));
        assert_eq!(
            s.tuning,
            Tuning {
                congestion: Some(flow::CongestionControl::Bbr),
                rate: Some(200_000_000)
            }
        );
        assert!(s.compression, "on unless turned off");
        let mut a = args(Some(path.clone()));
        a.tuning.congestion = Some(flow::CongestionControl::Cubic);
        a.no_compression = true;
        let s = serve_settings(a).expect("merges");
        assert_eq!(s.tuning.congestion, Some(flow::CongestionControl::Cubic));
        assert!(!s.compression, "--no-compression");
        std::fs::write(&path, "data = \"d\"\nkey = \"k\"\ncompression = false\n").expect("write");
        let s = serve_settings(args(Some(path.clone()))).expect("merges");
        assert!(!s.compression, "compression = false");

        std::fs::write(
            &path,
            "data = \"d\"\nkey = \"k\"\ncongestion = \"fastest\"\n",
        )
        .expect("write");
        let e = serve_settings(args(Some(path.clone()))).expect_err("bad controller");
        assert!(
            e.message.contains("congestion") && e.message.contains("model"),
            "{}",
            e.message
        );

        std::fs::write(&path, "lisen = []\n").expect("write");
        let e = serve_settings(args(Some(path))).expect_err("unknown field");
        assert!(e.message.contains("lisen"), "{}", e.message);
        let e = serve_settings(args(None)).expect_err("no data");
        assert!(e.message.contains("--data"), "{}", e.message);
    }
}
