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

/// A rate in the same (binary) units as [`human`]: `16.3 MiB/s`.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let per_second = bytes as f64 / elapsed.as_secs_f64().max(1e-9);
    format!("{}/s", human(per_second.min(u64::MAX as f64) as u64))
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

/// A line for the person at the terminal, on stderr, above `bar` when it is
/// drawn (so stdout stays the summary or the data); nothing with `-q`.
pub fn note_above(bar: &ProgressBar, line: String) {
    if quiet() {
    } else if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
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
    // The bar takes what the terminal's width leaves; the rate and ETA count
    // only bytes moved since the bar started (or was resumed), in the units of
    // the sizes.
    let template = if len.is_some() {
        "{msg} {percent:>3}% [{wide_bar}] {binary_bytes}/{binary_total_bytes} {rate} {elapsed_precise} ETA {left}"
    } else {
        "{msg} {binary_bytes} {rate} {elapsed_precise}"
    };
    BASE.store(0, std::sync::atomic::Ordering::Relaxed);
    if let Ok(style) = ProgressStyle::with_template(template) {
        let style = style
            .progress_chars("=> ")
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&rate(moved(state), state.elapsed()));
                },
            )
            .with_key(
                "left",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let moved = moved(state);
                    let left = state.len().unwrap_or(0).saturating_sub(state.pos());
                    let _ = if moved == 0 {
                        w.write_str("-")
                    } else {
                        let secs = left as f64 * state.elapsed().as_secs_f64() / moved as f64;
                        w.write_str(&short_duration(secs))
                    };
                },
            );
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(say_when_stalled(bar.clone(), what.to_string()));
    }
    *current_bar() = Some(bar.clone());
    bar
}

/// Where the bar under way started counting: bytes before it (a resumed
/// part) are not part of its rate.
static BASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes the bar has moved since it started counting.
fn moved(state: &indicatif::ProgressState) -> u64 {
    state
        .pos()
        .saturating_sub(BASE.load(std::sync::atomic::Ordering::Relaxed))
}

/// Puts `bar` at `position` as where it resumed: its rate and ETA count only
/// what moves from there.
pub fn resumed_at(bar: &ProgressBar, position: u64) {
    BASE.store(position, std::sync::atomic::Ordering::Relaxed);
    bar.set_position(position);
    bar.reset_eta();
}

/// `42s`, `3m05s`, `2h10m`.
fn short_duration(secs: f64) -> String {
    let secs = secs.clamp(0.0, 359_999.0) as u64;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
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
        } else if since.elapsed() >= STALL_AFTER && !message.starts_with("reconnecting") {
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
/// under way shows "reconnecting n/N" (`retries` = N) until bytes move again,
/// under a line "stalled, reconnecting (n/N): why" (the line alone without a
/// bar drawn).
pub fn follow_retries(
    mut events: tokio::sync::broadcast::Receiver<mft::Event>,
    retries: u32,
) -> tokio::task::JoinHandle<()> {
    use tokio::sync::broadcast::error::RecvError;
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(mft::Event::Retrying { attempt, error, .. }) => {
                    // The bar keeps its line short; the line above it says why.
                    let line = format!("stalled, reconnecting ({attempt}/{retries}): {error}");
                    match current_bar().as_ref() {
                        Some(bar) if !bar.is_hidden() && !bar.is_finished() => {
                            bar.set_message(format!("reconnecting {attempt}/{retries}"));
                            note_above(bar, format!("mftq: {line}"));
                        }
                        _ => notice(line),
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
