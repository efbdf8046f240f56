//! `mftq demo` and the command line as a newcomer meets it. The full command set
//! (keygen, serve, send, get, list) is exercised in `tests/cli.rs`.

use std::process::Command;

fn mftq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mftq"))
        .args(args)
        .output()
        .expect("the mftq binary runs")
}

#[test]
fn demo_json_reports_both_transports() {
    let out = mftq(&["demo", "--size", "4MiB", "--flows", "4", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(report["size"], 4 << 20);
    let transports: Vec<_> = report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["transport"].as_str().unwrap_or(""),
                r["segments"].clone(),
                r["verified"].clone(),
            )
        })
        .collect();
    assert_eq!(
        transports,
        vec![
            ("quic", 4.into(), true.into()),
            ("https", 4.into(), true.into())
        ]
    );
}

#[test]
fn bad_arguments_exit_2_naming_the_problem() {
    for (args, needle) in [
        (&["demo", "--size", "lots"][..], "lots"),
        (&["demo", "--flows", "0"][..], "--flows"),
        (&["frobnicate"][..], "frobnicate"),
        (&[][..], "Usage"),
    ] {
        let out = mftq(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn help_exits_0_with_examples() {
    for args in [
        &["--help"][..],
        &["keygen", "--help"],
        &["serve", "--help"],
        &["send", "--help"],
        &["get", "--help"],
        &["list", "--help"],
        &["demo", "--help"],
    ] {
        let out = mftq(args);
        assert!(out.status.success(), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("Examples:"), "{args:?}: {stdout}");
    }
}
