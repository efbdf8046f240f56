//! The few system calls std does not wrap: the TUN ioctl, `setns`, `ppoll`, a
//! timerfd, the thread's timer slack and scheduling policy, and the effective user
//! id. All of the crate's unsafe code lives here, behind safe functions.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

/// The TUN/TAP clone device.
pub(crate) const TUN_DEVICE: &str = "/dev/net/tun";

/// Whether the process runs with an effective user id of 0.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

/// Creates a TUN device (layer 3, no packet-information header) named `name` in the
/// network namespace of the calling thread, and returns its non-blocking file.
///
/// The device lives as long as the file: closing it removes the device.
pub(crate) fn create_tun(name: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_DEVICE)?;
    // SAFETY: ifreq is a plain C struct (a name array and a union of integers and
    // plain structs) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // The name stays NUL-terminated: it is shorter than the zeroed array.
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: the fd is open for the whole call (we own `file`), and TUNSETIFF reads
    // and writes one `struct ifreq`, which `req` is, valid and exclusively borrowed.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Moves the calling thread into the network namespace `ns` (an open
/// `/run/netns/NAME` file or `/proc/PID/ns/net`). Only this thread moves; sockets it
/// creates afterwards belong to that namespace for their whole life.
pub(crate) fn enter_net_namespace(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns takes a file descriptor, which is open for the duration of the
    // call since it is borrowed, and a flag; it touches no memory of ours.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the calling thread's timer slack to 1 ns so that its timed waits wake up
/// when asked rather than up to 50 µs (the default slack) later.
pub(crate) fn set_precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes a
    // property of the calling thread. (0 would mean "reset to the default".)
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Makes the calling thread real-time: SCHED_FIFO at `priority` (1 is the lowest
/// real-time priority, above every normal thread). Fails without CAP_SYS_NICE or
/// where the cgroup grants no real-time budget.
pub(crate) fn set_realtime(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 names the calling thread; `param` is a valid sched_param that
    // outlives the call, which only reads it.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until one of `fds` is readable (or in error), and returns which are.
/// Timed waits put a [`Timer`] among the descriptors.
pub(crate) fn wait_readable<const N: usize>(fds: [BorrowedFd<'_>; N]) -> io::Result<[bool; N]> {
    let mut polls = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `polls` is an array of N initialised pollfd that ppoll may write
    // (revents) for the duration of the call; a null timeout waits without limit and
    // a null signal mask leaves the mask alone. The descriptors are borrowed, hence
    // open throughout.
    let rc = unsafe {
        libc::ppoll(
            polls.as_mut_ptr(),
            N as libc::nfds_t,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok([false; N]);
        }
        return Err(err);
    }
    Ok(polls.map(|p| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0))
}

/// A one-shot timer as a file descriptor (timerfd on CLOCK_MONOTONIC, the clock of
/// `Instant`), to wait for in `ppoll` beside other descriptors. Unlike a `ppoll`
/// timeout, which the kernel lets fire up to 0.1% late (50 µs on a 50 ms wait), it
/// expires when set to, give or take the thread's timer slack.
#[derive(Debug)]
pub(crate) struct Timer(File);

impl Timer {
    pub(crate) fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create takes a clock id and flags and returns a new fd or -1.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Timer(File::from(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// Arms the timer to expire `after` from now (at least 1 ns: zero would disarm).
    pub(crate) fn set(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the fd is ours and open; `spec` is a valid itimerspec that outlives
        // the call; a null old-value pointer asks for nothing back.
        let rc =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Clears an expiry so the descriptor stops being readable.
    pub(crate) fn clear(&self) {
        let mut expirations = [0u8; 8];
        // A read of 8 bytes, or EAGAIN if it has not expired: either is fine.
        let _ = io::Read::read(&mut &self.0, &mut expirations);
    }
}

impl AsFd for Timer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
