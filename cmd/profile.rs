//! The client's own files, so that a command needs less typing: the config
//! directory (`$MFTQ_CONFIG_DIR`, else `$XDG_CONFIG_HOME/mftq`, else
//! `~/.config/mftq`) holds the default identity (`id.key`, created on first
//! use), named remotes (`config.toml`) and the servers trusted on first use
//! (`known_servers`); and the `MFTQ_KEY`, `MFTQ_SERVER_KEY` and `MFTQ_ENDPOINT`
//! variables stand in for their flags.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use flow::{Identity, PeerKey};
use serde::Deserialize;

use crate::args::{ClientArgs, Transport};
use crate::error::CliError;

/// The client's config file: remotes by name, and whether to trust servers on
/// first use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// Trust a server's key on first use, for every endpoint.
    #[serde(default)]
    pub trust_on_first_use: bool,
    /// Named servers: `[remotes.backup]`.
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

/// One named server and the defaults for commands that name it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// `mftq://host:port`, `quic://…` or `https://…`.
    pub endpoint: String,
    /// Its public key: 64 hex digits, or `@FILE`.
    pub server_key: Option<String>,
    /// Our private key file for it.
    pub key: Option<PathBuf>,
    /// `auto`, `quic` or `https`.
    pub transport: Option<String>,
    /// Network failures to retry.
    pub retries: Option<u32>,
    /// Trust its key on first use.
    #[serde(default)]
    pub trust_on_first_use: bool,
}

/// What a client command runs with, from its flags, the environment and the
/// config file, flags first.
#[derive(Debug)]
pub struct Resolved {
    /// The endpoint's text.
    pub endpoint: String,
    /// The server's key, if given (else known_servers or trust on first use).
    pub server_key: Option<PeerKey>,
    /// Our private key file.
    pub key: PathBuf,
    /// The transport, if the remote sets one.
    pub transport: Option<Transport>,
    /// Retries, if the remote sets them.
    pub retries: Option<u32>,
    /// Trust the server's key on first use.
    pub trust_on_first_use: bool,
    /// Where known_servers is (none without a config directory).
    pub known_servers: Option<PathBuf>,
}

/// The config directory, if there is a home to keep it in.
pub fn config_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("MFTQ_CONFIG_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(dir).join("mftq"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".config").join("mftq"))
}

/// Reads `config.toml` in `dir`; a missing file is an empty one.
pub fn load_file(dir: &Path) -> Result<ClientFile, CliError> {
    let path = dir.join("config.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ClientFile::default()),
        Err(e) => return Err(CliError::io(path.display(), e)),
    };
    toml::from_str(&text)
        .map_err(|e| CliError::usage(format!("{}: {}", path.display(), e.message())))
}

/// Resolves what `args` (with `flag` naming the endpoint, given or not) leave
/// to the environment and the config file.
pub fn resolve(
    args: &ClientArgs,
    flag: &str,
    endpoint: Option<&str>,
) -> Result<Resolved, CliError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let dir = config_dir();
    let file = match &dir {
        Some(dir) => load_file(dir)?,
        None => ClientFile::default(),
    };
    let given = endpoint
        .map(str::to_string)
        .or_else(|| env("MFTQ_ENDPOINT"))
        .ok_or_else(|| {
            CliError::usage(format!(
                "{flag}: which server? Give an endpoint (mftq://host:port), a remote named \
                 in {}, or set MFTQ_ENDPOINT",
                config_path(&dir)
            ))
        })?;
    let remote = if given.contains(':') {
        None
    } else {
        Some(file.remotes.get(&given).ok_or_else(|| {
            let names: Vec<&str> = file.remotes.keys().map(String::as_str).collect();
            CliError::usage(format!(
                "{flag} {given}: not an endpoint (host:port), and no remote of that name in {} \
                 ({})",
                config_path(&dir),
                if names.is_empty() {
                    "it names none".to_string()
                } else {
                    format!("it names {}", names.join(", "))
                }
            ))
        })?)
    };
    let server_key = match args
        .server_key
        .clone()
        .or_else(|| env("MFTQ_SERVER_KEY"))
        .or_else(|| remote.and_then(|r| r.server_key.clone()))
    {
        Some(text) => Some(server_key("--server-key", &text)?),
        None => None,
    };
    let key = match args
        .key
        .clone()
        .or_else(|| env("MFTQ_KEY").map(PathBuf::from))
        .or_else(|| remote.and_then(|r| r.key.as_deref().map(expand_home)))
    {
        Some(key) => key,
        None => default_identity(&dir)?,
    };
    let transport = match remote.and_then(|r| r.transport.as_deref()) {
        None => None,
        Some("auto") => Some(Transport::Auto),
        Some("quic") => Some(Transport::Quic),
        Some("https") => Some(Transport::Https),
        Some(other) => {
            return Err(CliError::usage(format!(
                "{}: remote {given}: transport {other:?}: expected auto, quic or https",
                config_path(&dir)
            )));
        }
    };
    Ok(Resolved {
        endpoint: remote.map_or(given.clone(), |r| r.endpoint.clone()),
        server_key,
        key,
        transport,
        retries: remote.and_then(|r| r.retries),
        trust_on_first_use: args.trust_on_first_use
            || file.trust_on_first_use
            || remote.is_some_and(|r| r.trust_on_first_use),
        known_servers: dir.map(|d| d.join("known_servers")),
    })
}

/// A path from the config file, `~/` standing for the home directory as a
/// shell would read it.
fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) if !home.is_empty() => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// `config.toml`'s path, for messages.
fn config_path(dir: &Option<PathBuf>) -> String {
    dir.as_ref().map_or_else(
        || "~/.config/mftq/config.toml".into(),
        |d| d.join("config.toml").display().to_string(),
    )
}

/// A server key given as 64 hex digits, or as `@FILE` holding them.
pub fn server_key(flag: &str, text: &str) -> Result<PeerKey, CliError> {
    let (shown, key_text) = match text.strip_prefix('@') {
        Some(file) => {
            let held = std::fs::read_to_string(file)
                .map_err(|e| CliError::io(format!("{flag} @{file}"), e))?;
            (format!("@{file}"), held.trim().to_string())
        }
        None => (text.to_string(), text.trim().to_string()),
    };
    key_text.parse().map_err(|e: flow::Error| {
        CliError::usage(format!(
            "{flag} {shown:?}: {} (a server key is 64 hex digits, as `mftq serve` or \
             `mftq pubkey` print it)",
            e.reason()
        ))
    })
}

/// The default identity's file, `id.key` in the config directory: made, with
/// a notice, the first time it is needed.
fn default_identity(dir: &Option<PathBuf>) -> Result<PathBuf, CliError> {
    let dir = dir.as_ref().ok_or_else(|| {
        CliError::usage("--key: needed (there is no HOME to keep a default key in)")
    })?;
    let path = dir.join("id.key");
    if path.exists() {
        return Ok(path);
    }
    make_private_dir(dir)?;
    let identity = Identity::generate();
    identity
        .save(&path)
        .map_err(|e| CliError::io(format!("creating {}", path.display()), e))?;
    crate::output::notice(format!(
        "created your key {} (public key {}); servers need the public key in \
         their allow-lists",
        path.display(),
        identity.public_key()
    ));
    Ok(path)
}

/// Creates `dir` (and its parents) closed to others, if it is missing.
fn make_private_dir(dir: &Path) -> Result<(), CliError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| CliError::io(format!("creating {}", dir.display()), e))
}

/// The key `known_servers` holds for `address`, with its 1-based line.
pub fn known_server(file: &Path, address: &str) -> Result<Option<(PeerKey, usize)>, CliError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::io(file.display(), e)),
    };
    for (i, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(at), Some(key)) = (words.next(), words.next()) else {
            continue;
        };
        if at.starts_with('#') || at != address {
            continue;
        }
        let key = key.parse().map_err(|e: flow::Error| {
            CliError::usage(format!(
                "{} line {}: {} (expected: ADDRESS KEY)",
                file.display(),
                i + 1,
                e.reason()
            ))
        })?;
        return Ok(Some((key, i + 1)));
    }
    Ok(None)
}

/// Adds `address key` to `known_servers`.
pub fn remember_server(file: &Path, address: &str, key: &PeerKey) -> Result<(), CliError> {
    if let Some(dir) = file.parent() {
        make_private_dir(dir)?;
    }
    let io = |e| CliError::io(format!("writing {}", file.display()), e);
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(io)?;
    writeln!(out, "{address} {key}").map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_servers_are_found_by_address_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("sub/known_servers");
        assert_eq!(known_server(&file, "a:1").expect("reads"), None);
        let (a, b) = (
            Identity::generate().public_key(),
            Identity::generate().public_key(),
        );
        remember_server(&file, "a:1", &a).expect("writes");
        remember_server(&file, "b:2", &b).expect("writes");
        assert_eq!(known_server(&file, "b:2").expect("reads"), Some((b, 2)));
        assert_eq!(known_server(&file, "c:3").expect("reads"), None);
        std::fs::write(&file, "# comment\nc:3 nothex\n").expect("writes");
        let err = known_server(&file, "c:3").expect_err("refused");
        assert!(err.message.contains("line 2"), "{}", err.message);
    }

    #[test]
    fn a_key_path_may_start_at_home() {
        let Some(home) = std::env::var_os("HOME") else {
            return;
        };
        assert_eq!(
            expand_home(Path::new("~/.config/mftq/work.key")),
            PathBuf::from(home).join(".config/mftq/work.key")
        );
        assert_eq!(expand_home(Path::new("/etc/k")), PathBuf::from("/etc/k"));
        assert_eq!(expand_home(Path::new("~user/k")), PathBuf::from("~user/k"));
    }

    #[test]
    fn a_server_key_may_come_from_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = Identity::generate().public_key();
        let file = dir.path().join("server.pub");
        std::fs::write(&file, format!("{key}\n")).expect("writes");
        let text = format!("@{}", file.display());
        assert_eq!(server_key("--server-key", &text).expect("reads"), key);
        let err = server_key("--server-key", "@/nonexistent").expect_err("no file");
        assert!(err.message.contains("@/nonexistent"), "{}", err.message);
        let err = server_key("--server-key", "abc").expect_err("not a key");
        assert!(err.message.contains("64 hex digits"), "{}", err.message);
    }
}
