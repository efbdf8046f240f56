//! Key files: `mftq keygen` (a new Ed25519 private key, its public key
//! printed), `mftq pubkey` (a key file's public key), and loading a private key
//! as ssh does: one that others may read is refused with the `chmod` to run,
//! and a file that is not a private key is named for what it is.

use std::io::Write;
use std::path::Path;

use flow::{Identity, PeerKey};

use crate::args::{KeygenArgs, PubkeyArgs};
use crate::error::{CliError, Exit};

/// Writes a fresh key to `args.out` (mode 0600; an existing file only with
/// `--force`) and prints the public key as 64 hex digits. With `--out -` the
/// private key goes to stdout, and the public key to stderr.
pub fn run(args: KeygenArgs) -> Result<(), CliError> {
    let identity = Identity::generate();
    let path = &args.out;
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(identity.to_pkcs8_pem().as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| CliError::io("writing the key to stdout", e))?;
        eprintln!("mftq: public key {}", identity.public_key());
        return Ok(());
    }
    if path.exists() {
        if !args.force {
            return Err(CliError::usage(format!(
                "--out {}: the file exists; pass --force to replace it",
                path.display()
            )));
        }
        if path.is_dir() {
            return Err(CliError::usage(format!(
                "--out {}: is a directory",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| CliError::io(format!("--out {}", path.display()), e))?;
    }
    identity.save(path).map_err(|e| {
        let mut err = CliError::io(format!("--out {}", path.display()), e);
        if err.exit == Exit::Other {
            err.exit = Exit::Usage;
        }
        err
    })?;
    crate::output::notice(format!("wrote private key {}", path.display()));
    println!("{}", identity.public_key());
    Ok(())
}

/// Prints the public key of a private key file (checked as [`load_identity`]
/// checks it), or of a public key file (64 hex digits), as 64 hex digits.
pub fn pubkey(args: PubkeyArgs) -> Result<(), CliError> {
    let path = &args.file;
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::io(format!("{}", path.display()), e))?;
    let key = match text.trim().parse::<PeerKey>() {
        Ok(public) => public,
        Err(_) => load_from(path, "KEYFILE")?.public_key(),
    };
    println!("{key}");
    Ok(())
}

/// Loads the private key file `path` given as `--key`; see [`load_from`].
pub fn load_identity(path: &Path) -> Result<Identity, CliError> {
    load_from(path, "--key")
}

/// Loads the private key file `path` (named `flag` in errors): refused if
/// others may read it (with the `chmod` to run), or, when it is not a private
/// key, with what it holds instead.
fn load_from(path: &Path, flag: &str) -> Result<Identity, CliError> {
    let shown = path.display();
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::usage(format!(
                "{flag} {shown}: no such file (make one with `mftq keygen --out {shown}`)"
            )));
        }
        Err(e) => return Err(CliError::io(format!("{flag} {shown}"), e)),
    };
    let text = String::from_utf8_lossy(&text);
    let identity = Identity::from_pkcs8_pem(&text)
        .map_err(|_| CliError::usage(format!("{flag} {shown}: {}", what_it_holds(&text))))?;
    check_private(path, flag)?;
    Ok(identity)
}

/// Refuses a private key file that its group or others may read or write, as
/// ssh does.
#[cfg(unix)]
fn check_private(path: &Path, flag: &str) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| CliError::io(format!("{flag} {}", path.display()), e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(CliError::usage(format!(
            "{flag} {}: permissions {:04o} let others read this private key; \
             run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _flag: &str) -> Result<(), CliError> {
    Ok(())
}

/// What a file that is not a private key file holds, for the error.
fn what_it_holds(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.parse::<PeerKey>().is_ok() {
        return "holds a public key, not a private key; use the private key file here \
                (the public key goes to --server-key or an allow-list)"
            .into();
    }
    if trimmed.contains("-----BEGIN PUBLIC KEY-----") {
        return "holds a PEM public key, not a private key".into();
    }
    if trimmed.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        return "is an OpenSSH key; mftq reads PKCS#8 PEM Ed25519 keys \
                (`-----BEGIN PRIVATE KEY-----`, from `mftq keygen` or \
                `openssl genpkey -algorithm ed25519`)"
            .into();
    }
    if trimmed.contains("-----BEGIN PRIVATE KEY-----") {
        return "a PKCS#8 private key, but not an Ed25519 one (mftq keys are Ed25519)".into();
    }
    if trimmed.contains("-----BEGIN") {
        return "a PEM file, but not a PKCS#8 Ed25519 private key (`-----BEGIN PRIVATE KEY-----`)"
            .into();
    }
    "not a key file: expected a PKCS#8 PEM Ed25519 private key (from `mftq keygen`)".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_private_keys_are_named_for_what_they_hold() {
        let public = Identity::generate().public_key().to_string();
        assert!(what_it_holds(&format!("{public}\n")).contains("holds a public key"));
        assert!(
            what_it_holds("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbg==\n").contains("OpenSSH")
        );
        assert!(what_it_holds("-----BEGIN CERTIFICATE-----\n").contains("PEM file"));
        assert!(what_it_holds("hello").starts_with("not a key file"));
    }
}
