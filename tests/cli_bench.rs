//! `mftq bench` end to end: a small matrix on loopback (and, as root, over the
//! emulated link) writes a table, well-formed JSON and a well-formed SVG chart. No
//! figure is judged here: benchmarks measure, tests check behaviour.

use std::path::Path;
use std::process::Command;

fn bench(dir: &Path, args: &[&str]) -> (serde_json::Value, String, String) {
    let prefix = dir.join("result");
    let out = Command::new(env!("CARGO_BIN_EXE_mftq"))
        .arg("bench")
        .args(args)
        .arg("--output")
        .arg(&prefix)
        .output()
        .expect("the mftq binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let json = std::fs::read_to_string(dir.join("result.json")).expect("the JSON file");
    let report: serde_json::Value = serde_json::from_str(&json).expect("well-formed JSON");
    let svg = std::fs::read_to_string(dir.join("result.svg")).expect("the SVG file");
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let bars = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("height") != Some("100%"))
        .count();
    assert_eq!(
        bars,
        report["results"].as_array().map_or(0, Vec::len),
        "{svg}"
    );
    (report, stdout, stderr)
}

fn results(report: &serde_json::Value) -> &Vec<serde_json::Value> {
    report["results"].as_array().expect("results")
}

#[test]
fn a_loopback_matrix_writes_its_table_json_and_chart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (report, stdout, stderr) = bench(
        dir.path(),
        &[
            "--size",
            "3MiB",
            "--transports",
            "quic,https,raw-quic,raw-https",
            "--chunk",
            "256KiB",
            "--flows",
            "2",
        ],
    );
    let rows = results(&report);
    let transports: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["transport"].as_str())
        .collect();
    assert_eq!(transports, ["quic", "https", "raw-quic", "raw-https"]);
    for row in rows {
        assert_eq!(row["bytes"], 3 << 20, "{row}");
        assert!(row["mb_per_s"].as_f64().is_some_and(|v| v > 0.0), "{row}");
        assert!(
            row["receiver_peak_rss"].as_u64().is_some_and(|v| v > 0),
            "{row}"
        );
        assert_eq!(row["flows"], 2);
        assert_eq!(row["chunk"], 256 << 10);
    }
    // mft runs are compared with the raw mode of their transport, in this run.
    assert_eq!(rows[0]["ratio_to"], "raw-quic");
    assert_eq!(rows[1]["ratio_to"], "raw-https");
    assert!(rows[0]["congestion"].is_string() && rows[1]["congestion"].is_null());
    assert!(report["machine"]["cpus"].as_u64().is_some_and(|n| n >= 1));
    assert!(
        stdout.contains("MB/s") && stdout.contains("raw-quic"),
        "{stdout}"
    );
    // Progress: a line per run when stderr is not a terminal.
    assert!(stderr.contains("bench 4/4"), "{stderr}");
}

#[test]
fn many_small_batches_report_rate_and_latency() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (report, stdout, _) = bench(
        dir.path(),
        &[
            "--transports",
            "quic",
            "--batches",
            "40",
            "--concurrency",
            "8",
        ],
    );
    let rows = results(&report);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["batches"], 40);
    assert_eq!(row["bytes"], 40 * 4096);
    let (p50, p99) = (row["p50_ms"].as_f64(), row["p99_ms"].as_f64());
    assert!(
        matches!((p50, p99), (Some(a), Some(b)) if a > 0.0 && b >= a),
        "{row}"
    );
    assert!(row["batches_per_s"].as_f64().is_some_and(|v| v > 0.0));
    assert!(stdout.contains("batches/s"), "{stdout}");
}

#[test]
fn bad_bench_flags_exit_2_naming_the_flag() {
    for (args, needle) in [
        (&["--transports", "carrier-pigeon"][..], "carrier-pigeon"),
        (&["--rate", "fast"][..], "fast"),
        (&["--loss", "200%"][..], "200%"),
        (&["--congestion", "vegas"][..], "vegas"),
        (&["--tcp-congestion", "bbr"][..], "--tcp-congestion"),
        (&["--batches", "0"][..], "--batches"),
        (
            &["--transports", "raw-quic", "--batches", "5"][..],
            "--batches",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mftq"))
            .arg("bench")
            .args(args)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// Over the emulated link (needs root: CI runs as root; elsewhere it is skipped,
/// saying so), rows compare with the link's rate, and the link is reported.
#[test]
fn an_emulated_link_run_compares_with_the_link() {
    if let Err(e) = netem::preflight() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the emulated bench: {e}"
        );
        eprintln!("skipped: {e}");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (report, _, _) = bench(
        dir.path(),
        &[
            "--size",
            "2MiB",
            "--transports",
            "quic,https",
            "--rtt",
            "20ms",
            "--rate",
            "100Mbit",
            "--loss",
            "0.5%",
        ],
    );
    assert_eq!(report["link"]["rtt_ms"], 20.0);
    assert_eq!(report["link"]["rate_bits_per_sec"], 100_000_000);
    for row in results(&report) {
        assert_eq!(row["ratio_to"], "link", "{row}");
        let ratio = row["ratio"].as_f64().expect("a ratio");
        // Goodput can never beat the link.
        assert!(ratio > 0.0 && ratio < 1.0, "{row}");
        assert!(row["relay_cpu_seconds"].as_f64().is_some(), "{row}");
    }
}
