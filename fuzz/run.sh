#!/usr/bin/env bash
# Runs each fuzz target for MINUTES minutes (default 10), one at a time, and prints one
# summary line per target: executions, executions a second, new coverage, crashes.
#
#   fuzz/run.sh                      # every target, 10 minutes each
#   fuzz/run.sh 2 decode registry    # those two, 2 minutes each
#   nice -n 10 fuzz/run.sh 10        # on a shared machine
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); a stable toolchain is enough, with
# RUSTC_BOOTSTRAP=1 (set here). Each run's full libFuzzer output is kept in
# fuzz/target/run-logs/TARGET.log; a crash leaves its input in fuzz/artifacts/TARGET/
# (see fuzz/README.md to replay and shrink it). Exits 1 if any target crashed or did not
# run.
set -u

cd "$(dirname "$0")" || exit 1
minutes=${1:-10}
case $minutes in
'' | *[!0-9]*)
    echo "usage: $0 [MINUTES] [TARGET...]" >&2
    exit 2
    ;;
esac
shift $(($# > 0 ? 1 : 0))
export RUSTC_BOOTSTRAP=1
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
secs=$((minutes * 60))
logs=target/run-logs
mkdir -p "$logs"

# Build them all first, so that the timed runs are runs.
for t in "${targets[@]}"; do
    if ! cargo fuzz build "$t" >"$logs/$t.build.log" 2>&1; then
        echo "$t: does not build; see fuzz/$logs/$t.build.log" >&2
        exit 1
    fi
done

count_artifacts() {
    find "artifacts/$1" -type f 2>/dev/null | wc -l
}

summary=()
failed=0
for t in "${targets[@]}"; do
    extra=()
    # decode takes raw datagrams: up to the protocol's 8192 bytes and a little past.
    [ "$t" = decode ] && extra=(-max_len=8400)
    before=$(count_artifacts "$t")
    echo "== $t: $minutes min" >&2
    cargo fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=1 "${extra[@]}" \
        >"$logs/$t.log" 2>&1
    status=$?
    after=$(count_artifacts "$t")
    crashes=$((after - before))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$logs/$t.log" | tail -n 1)
    if [ -z "$execs" ]; then
        line="$t: no final stats (exit status $status); see fuzz/$logs/$t.log"
        failed=1
    else
        line="$t: $execs executions in $minutes min ($rate/s), ${cov:-cov: ?}, $crashes crashes (exit status $status)"
        [ "$crashes" -gt 0 ] || [ "$status" -ne 0 ] && failed=1
    fi
    echo "$line" >&2
    summary+=("$line")
done

echo "fuzz summary, $(date -u +%Y-%m-%dT%H:%MZ), $minutes min per target:"
printf '%s\n' "${summary[@]}"
exit $failed
