#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target, then runs each for N seconds
# (default 20) on its corpus (fuzz/corpus/TARGET, kept between runs, not
# committed) plus the checked-in seeds (fuzz/seeds/TARGET, read-only).
# Exits non-zero if any target crashed, hung (> 10 s on one input), ran out of
# memory, or failed to build; the offending input is in fuzz/artifacts/TARGET/.
#
# usage: fuzz/smoke.sh [SECONDS] [TARGET...]
#   FUZZ_TOOLCHAIN  rustup toolchain (default: nightly)
#   FUZZ_ARGS       extra libFuzzer flags, e.g. "-jobs=2"
set -uo pipefail

secs=${1:-20}
shift || true
cd "$(dirname "$0")"
toolchain=+${FUZZ_TOOLCHAIN:-nightly}

if ! cargo "$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "smoke.sh: cargo-fuzz missing: cargo install cargo-fuzz" >&2
    exit 2
fi
cargo "$toolchain" fuzz build || { echo "smoke.sh: build failed" >&2; exit 1; }

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "$toolchain" fuzz list)
fi

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    echo "=== $t: ${secs}s"
    # shellcheck disable=SC2086
    if ! cargo "$toolchain" fuzz run "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 ${FUZZ_ARGS:-}; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "smoke.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "smoke.sh: all ${#targets[@]} targets ran ${secs}s without a crash"
