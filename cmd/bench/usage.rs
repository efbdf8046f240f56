//! What a process used: CPU seconds and peak memory, read from procfs.

use serde::{Deserialize, Serialize};

/// Linux reports CPU time in clock ticks of `USER_HZ`, which is 100 on every
/// architecture's user-space ABI.
const USER_HZ: f64 = 100.0;

/// A process's resource use so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// User plus system CPU seconds of every thread, ended ones included.
    pub cpu_seconds: f64,
    /// Peak resident memory in bytes (`VmHWM`).
    pub peak_rss: u64,
}

impl Usage {
    /// This process's use so far (zeros where procfs is unavailable).
    pub fn now() -> Self {
        Usage {
            cpu_seconds: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| cpu_seconds(&s))
                .unwrap_or(0.0),
            peak_rss: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| peak_rss(&s))
                .unwrap_or(0),
        }
    }
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its closing parenthesis.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is index 0 here; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// `VmHWM` from `/proc/PID/status`, in bytes.
fn peak_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_lines_parse() {
        let stat =
            "4242 (mftq (bench) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 75 0 0 20 0 9 0 1 1 1";
        assert_eq!(cpu_seconds(stat), Some(3.25));
        assert_eq!(cpu_seconds("garbage"), None);
        let status = "Name:\tmftq\nVmPeak:\t  9000 kB\nVmHWM:\t  51200 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(peak_rss(status), Some(51200 * 1024));
        let now = Usage::now();
        assert!(now.peak_rss > 0, "{now:?}");
    }
}
