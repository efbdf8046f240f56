//! Named network namespaces, made and removed with iproute2's `ip netns`, and the
//! threads that enter them.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, sys};

/// Every namespace we make is named `mftq-emu-<pid>-<n>-<side>`.
pub(crate) const PREFIX: &str = "mftq-emu-";

/// Where `ip netns` keeps its named namespaces (`/var/run` is a link to `/run` on
/// current systems; older ones may only have the former).
const RUN_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// `ip netns add` and `del` mount and unmount in the shared run directory; running
/// several at once from one process can stack those mounts, so ours take turns.
static IP_NETNS: Mutex<()> = Mutex::new(());

/// A unique stem for a new pair of namespaces.
pub(crate) fn unique_stem() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip ARGS`, feeding it `stdin` if given; a failure carries its stderr.
pub(crate) fn ip<I, S>(args: I, stdin: Option<&str>) -> Result<(), Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new("ip");
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let printed = std::iter::once("ip".to_owned())
        .chain(command.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = command.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::NoIp(e),
        _ => Error::io(format!("running `{printed}`"), e),
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| Error::io(format!("writing to `{printed}`"), e))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("running `{printed}`"), e))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr)
        .trim()
        .replace('\n', "; ");
    Err(Error::Command {
        command: printed,
        message: if stderr.is_empty() {
            output.status.to_string()
        } else {
            stderr
        },
    })
}

/// Removes namespaces of ours whose process no longer exists (a run that crashed or
/// was killed before its `Drop`).
pub(crate) fn remove_stale() {
    let own = std::process::id();
    let mut stale = Vec::new();
    for dir in RUN_DIRS {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
            else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if pid != own && !Path::new(&format!("/proc/{pid}")).exists() && !stale.contains(&name)
            {
                stale.push(name);
            }
        }
    }
    let _turn = IP_NETNS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for name in stale {
        // Another process may be removing it too; either way it goes.
        let _ = ip(["netns", "del", &name], None);
    }
}

/// A named network namespace, removed (by name) on drop. Processes still inside it
/// keep it alive, unnamed, until they exit.
#[derive(Debug)]
pub(crate) struct Namespace {
    name: String,
    /// `/run/netns/NAME`, open, for `setns`.
    file: File,
}

impl Namespace {
    /// Makes a namespace called `name` with `ip netns add`.
    pub(crate) fn create(name: String) -> Result<Namespace, Error> {
        let _turn = IP_NETNS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ip(["netns", "add", &name], None)?;
        let opened = RUN_DIRS
            .iter()
            .map(|dir| PathBuf::from(dir).join(&name))
            .find_map(|path| File::open(path).ok());
        match opened {
            Some(file) => Ok(Namespace { name, file }),
            None => {
                let _ = ip(["netns", "del", &name], None);
                Err(Error::io(
                    format!(
                        "opening namespace {name} (looked in {})",
                        RUN_DIRS.join(" and ")
                    ),
                    io::Error::from(io::ErrorKind::NotFound),
                ))
            }
        }
    }

    /// Its name, for `ip netns exec` and `ip -n`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread inside the namespace and returns its result. A panic
    /// in `f` is resumed on the caller's thread.
    pub(crate) fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("netns {}", self.name))
                .spawn_scoped(scope, || {
                    sys::enter_net_namespace(self.file.as_fd()).map_err(|e| {
                        Error::io(format!("entering namespace {} (setns)", self.name), e)
                    })?;
                    Ok(f())
                })
                .map_err(|e| Error::io("starting a thread", e))?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs `ip -n NAME -batch -` with these commands, one a line.
    pub(crate) fn ip_batch(&self, commands: &str) -> Result<(), Error> {
        ip(["-n", &self.name, "-batch", "-"], Some(commands))
    }

    /// A command that runs `program` inside the namespace.
    pub(crate) fn command(&self, program: &OsStr) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec"]).arg(&self.name).arg(program);
        command
    }

    /// Makes `algorithm` the namespace's default TCP congestion control.
    pub(crate) fn set_tcp_congestion(&self, algorithm: &str) -> Result<(), Error> {
        const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";
        const ALLOWED: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";
        const DEFAULT: &str = "/proc/sys/net/ipv4/tcp_congestion_control";
        let refuse = |reason: String| Error::CongestionControl {
            name: algorithm.to_owned(),
            reason,
        };
        if algorithm.is_empty()
            || !algorithm
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(refuse("not an algorithm name".into()));
        }
        let available = fs::read_to_string(AVAILABLE)
            .map_err(|e| Error::io(format!("reading {AVAILABLE}"), e))?;
        if !available.split_whitespace().any(|a| a == algorithm) {
            return Err(refuse(format!(
                "the kernel does not have it (available: {}; try `modprobe tcp_{algorithm}`)",
                available.trim()
            )));
        }
        // Outside the initial namespace only "allowed" algorithms may become the
        // default (the kernel says EPERM otherwise), and that list is global, set
        // from the initial namespace: add the algorithm to it if it is missing.
        let allowed =
            fs::read_to_string(ALLOWED).map_err(|e| Error::io(format!("reading {ALLOWED}"), e))?;
        if !allowed.split_whitespace().any(|a| a == algorithm) {
            let widened = format!("{} {algorithm}", allowed.trim());
            fs::write(ALLOWED, widened.trim()).map_err(|e| {
                refuse(format!(
                    "only algorithms in {ALLOWED} ({}) can be a namespace's default, and adding it failed \
                     (is this process in the initial network namespace?): {e}",
                    allowed.trim()
                ))
            })?;
        }
        let current = self.run(|| -> io::Result<String> {
            fs::write(DEFAULT, algorithm)?;
            fs::read_to_string(DEFAULT)
        })?;
        match current {
            Ok(now) if now.trim() == algorithm => Ok(()),
            Ok(now) => Err(refuse(format!(
                "the namespace's default is still {}",
                now.trim()
            ))),
            Err(e) => Err(refuse(format!(
                "writing {DEFAULT} in namespace {}: {e}",
                self.name
            ))),
        }
    }

    /// Reads the sysctl `key` (`net.…`, dots or slashes) inside the namespace.
    pub(crate) fn sysctl(&self, key: &str) -> Result<String, Error> {
        let path = sysctl_path(key)?;
        self.run(|| fs::read_to_string(&path))?
            .map(|value| value.trim().to_owned())
            .map_err(|e| {
                Error::io(
                    format!("reading {} in namespace {}", path.display(), self.name),
                    e,
                )
            })
    }

    /// Writes the sysctl `key` (`net.…`) inside the namespace.
    pub(crate) fn set_sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = sysctl_path(key)?;
        self.run(|| fs::write(&path, value))?.map_err(|e| {
            Error::io(
                format!(
                    "writing {value:?} to {} in namespace {}",
                    path.display(),
                    self.name
                ),
                e,
            )
        })
    }
}

/// `/proc/sys/…` for a `net.` sysctl name; other names are refused (they are not
/// per namespace, so setting them would change the host).
fn sysctl_path(key: &str) -> Result<PathBuf, Error> {
    let key = key.replace('.', "/");
    let valid = key.starts_with("net/")
        && key.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !valid {
        return Err(Error::InvalidConfig(format!(
            "{key:?} is not a net.* sysctl name (only those are per namespace)"
        )));
    }
    Ok(Path::new("/proc/sys").join(key))
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _turn = IP_NETNS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Nothing useful to do if it fails (someone removed it already).
        let _ = ip(["netns", "del", &self.name], None);
    }
}
