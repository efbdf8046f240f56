#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 10) on its corpus;
# exits non-zero on the first crash, leaving the input in fuzz/artifacts/.
# Only the stable toolchain is here: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its
# instrumentation flags, and --sanitizer none skips AddressSanitizer (which needs
# a nightly standard library); libFuzzer's coverage guidance and our assertions
# still run.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-10}"
export RUSTC_BOOTSTRAP=1
cargo fuzz build --sanitizer none
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    log="$(mktemp)"
    status=0
    cargo fuzz run --sanitizer none "$target" "corpus/$target" -- \
        -max_total_time="$seconds" >"$log" 2>&1 || status=$?
    grep -E '^Done' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz: $target failed (status $status); the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    rm -f "$log"
done
