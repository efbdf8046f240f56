//! `mftq keygen`: a new Ed25519 private key file, and its public key on stdout.

use flow::Identity;

use crate::args::KeygenArgs;
use crate::error::{CliError, Exit};

/// Writes a fresh key to `args.out` (mode 0600; an existing file only with
/// `--force`) and prints the public key as 64 hex digits.
pub fn run(args: KeygenArgs) -> Result<(), CliError> {
    let path = &args.out;
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
    let identity = Identity::generate();
    identity.save(path).map_err(|e| {
        let mut err = CliError::io(format!("--out {}", path.display()), e);
        if err.exit == Exit::Other {
            err.exit = Exit::Usage;
        }
        err
    })?;
    eprintln!("mftq: wrote private key {}", path.display());
    println!("{}", identity.public_key());
    Ok(())
}
