//! The `mftq` binary as a newcomer meets it.

use std::process::Command;

fn mftq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mftq"))
        .args(args)
        .output()
        .expect("the mftq binary runs")
}

#[test]
fn demo_transfers_and_verifies() {
    let out = mftq(&["demo", "--size", "4MiB", "--flows", "4"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("4.0 MiB, 4 segments over 4 flows on 1 QUIC connection")
            && stdout.contains("verified: every byte and the metadata match"),
        "{stdout}"
    );
}

#[test]
fn bad_arguments_exit_2_naming_the_problem() {
    for (args, needle) in [
        (&["demo", "--size", "lots"][..], "lots"),
        (&["demo", "--flows", "0"][..], "--flows"),
        (&["frobnicate"][..], "frobnicate"),
    ] {
        let out = mftq(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn help_exits_0() {
    let out = mftq(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: mftq demo"));
}
