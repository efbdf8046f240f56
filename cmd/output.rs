//! Output helpers: sizes and rates for people, progress bars, JSON, hex.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `1.5 MiB`, `3.00 GiB`, `12 B`.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Megabytes (10⁶ bytes) per second.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `-q`: nothing but errors (and JSON asked for).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// `--no-progress` (or `-q`): no bar.
static NO_PROGRESS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets, once from the global flags, how much the command says.
pub fn configure(quiet: bool, no_progress: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    QUIET.store(quiet, Relaxed);
    NO_PROGRESS.store(quiet || no_progress, Relaxed);
}

/// Whether `-q` was given: notices and human summaries are left out.
pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// A notice on stderr, `mftq: text`, unless `-q`.
pub fn notice(text: impl std::fmt::Display) {
    if !quiet() {
        eprintln!("mftq: {text}");
    }
}

/// A progress bar on stderr with rate and ETA, hidden when stderr is not a
/// terminal, `hidden` is set, or `--no-progress` or `-q` was given. `len` is
/// `None` when the total is unknown.
pub fn progress(len: Option<u64>, what: &str, hidden: bool) -> ProgressBar {
    let hidden = hidden || NO_PROGRESS.load(std::sync::atomic::Ordering::Relaxed);
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::no_length(),
    };
    if hidden || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
        return bar;
    }
    bar.set_draw_target(ProgressDrawTarget::stderr());
    let template = if len.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
    } else {
        "{msg} {bytes} {bytes_per_sec} {elapsed}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(say_when_stalled(bar.clone(), what.to_string()));
    }
    *current_bar() = Some(bar.clone());
    bar
}

/// How long no byte may move before the bar says the transfer is stalled.
const STALL_AFTER: Duration = Duration::from_secs(5);

/// The bar the transfer under way draws, for [`follow_retries`] to write on.
fn current_bar() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    static CURRENT: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);
    CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Until `bar` finishes: once no byte has moved for [`STALL_AFTER`], says so
/// in its message (unless a retry says more already); once bytes move again,
/// puts `what` back.
async fn say_when_stalled(bar: ProgressBar, what: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut last, mut since) = (bar.position(), tokio::time::Instant::now());
    while !bar.is_finished() {
        tick.tick().await;
        let now = bar.position();
        let message = bar.message();
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
            if message != what {
                bar.set_message(what.clone());
            }
        } else if since.elapsed() >= STALL_AFTER && !message.starts_with("stalled, reconnecting") {
            bar.set_message(format!("stalled {}s", since.elapsed().as_secs()));
        }
    }
}

/// A task stopped when this is dropped: a helper that lives as long as a command.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reports the client's retries as they happen, until `events` end: the bar
/// under way shows "stalled, reconnecting (n/N)" (`retries` = N) until bytes
/// move again; without a bar drawn, a line on stderr says so with the failure.
pub fn follow_retries(
    mut events: tokio::sync::broadcast::Receiver<mft::Event>,
    retries: u32,
) -> tokio::task::JoinHandle<()> {
    use tokio::sync::broadcast::error::RecvError;
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(mft::Event::Retrying { attempt, error, .. }) => {
                    let status = format!("stalled, reconnecting ({attempt}/{retries})");
                    match current_bar().as_ref() {
                        Some(bar) if !bar.is_hidden() && !bar.is_finished() => {
                            bar.set_message(status)
                        }
                        _ => notice(format!("{status}: {error}")),
                    }
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    })
}

/// Prints `value` as one line of pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Metadata bytes as JSON when they are JSON, else as a (lossy) string.
pub fn metadata_json(metadata: &[u8]) -> serde_json::Value {
    serde_json::from_slice(metadata)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(metadata).into()))
}

/// Metadata as one line of text, cut to `max` characters.
pub fn metadata_summary(metadata: &[u8], max: usize) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(metadata) {
        Ok(v) => v.to_string(),
        Err(_) => String::from_utf8_lossy(metadata).replace(['\n', '\r', '\t'], " "),
    };
    if text.chars().count() > max {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// `2026-11-22T22:04:33Z` from seconds since the Unix epoch (UTC).
pub fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human(4 << 20), "4.0 MiB");
        assert_eq!(human(12), "12 B");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(hex(&[0, 255]), "00ff");
        assert_eq!(metadata_summary(br#"{"a": 1}"#, 40), r#"{"a":1}"#);
        assert_eq!(metadata_summary(b"abcdef", 4), "abc…");
    }
}
