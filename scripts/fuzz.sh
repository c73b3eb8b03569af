#!/bin/sh
# Coverage-guided fuzzing of the capture core and the wire contract (cargo-fuzz, libFuzzer).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 300)
#
# Runs every target of capture/fuzz for a bounded time, one after the other, each on one core:
#   frame    one frame of any supported link type: link layer (fast path vs etherparse), NTP
#            parser, a fresh Analyzer (handle_frame + flush), counters, records, wire round trip
#   pairing  a capture script through one Analyzer as the agent drives it (frames, built
#            request/response pairs, idle ticks, flushes), invariants after every step
#   wire     bytes as a NATS message: ntp_wire::batch::decode, the sink's subject check and
#            aggregate, encode/decode round trip
#   control  bytes as control requests/replies and status documents, round trip
#
# Before fuzzing it installs what is missing (cargo-fuzz from crates.io; a nightly toolchain, or
# else stable with RUSTC_BOOTSTRAP=1) and regenerates the seed corpora in capture/fuzz/corpus/
# from the shared pcaps and the golden wire files. Corpora grow across runs (git-ignored);
# crashes land in capture/fuzz/artifacts/<target>/, logs in capture/fuzz/logs/.
#
# Environment: FUZZ_TARGETS (default "frame pairing wire control"), FUZZ_TOOLCHAIN (nightly or
# stable; default: nightly when it is installed or installable), FUZZ_PCAPS (default
# ../shared/corpus/pcaps), FUZZ_FRESH=1 to start from the seeds alone (deletes grown corpora).
# Exit status: 0 when no target crashed, 1 otherwise.
set -eu

cd "$(dirname "$0")/.."
root=$(pwd)
fuzz_dir="$root/capture/fuzz"
seconds=${1:-300}
targets=${FUZZ_TARGETS:-frame pairing wire control}
pcaps=${FUZZ_PCAPS:-$root/../shared/corpus/pcaps}

case $seconds in
'' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
    exit 64
    ;;
esac

# Toolchain: cargo-fuzz passes -Z flags (sanitizers, coverage), so it needs nightly, or stable
# told to accept them.
toolchain=${FUZZ_TOOLCHAIN:-}
if [ -z "$toolchain" ]; then
    if rustup run nightly rustc --version >/dev/null 2>&1; then
        toolchain=nightly
    elif rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
        toolchain=nightly
    else
        toolchain=stable
    fi
fi
if [ "$toolchain" != nightly ]; then
    export RUSTC_BOOTSTRAP=1
fi
cargo="cargo +$toolchain"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
echo "fuzz: $(rustup run "$toolchain" rustc --version)${RUSTC_BOOTSTRAP:+ with RUSTC_BOOTSTRAP=1}, $(cargo fuzz --version 2>/dev/null || echo cargo-fuzz)"

mkdir -p "$fuzz_dir/logs"
if [ "${FUZZ_FRESH:-0}" = 1 ]; then
    rm -rf "$fuzz_dir/corpus"
fi

# Seeds: every frame of the shared pcaps, the pcaps as pairing scripts, built scenarios, the
# records of both as encoded batches, the golden batches, sample control and status documents.
$cargo build --quiet --release --manifest-path "$fuzz_dir/Cargo.toml" --bin seeds
# shellcheck disable=SC2046 # the golden files are separate arguments
"$fuzz_dir/target/release/seeds" "$pcaps" "$fuzz_dir/corpus" $(ls "$root"/capture/wire/tests/golden/*.msgpack 2>/dev/null)

max_len() {
    case $1 in
    pairing | wire) echo 8192 ;;
    *) echo 4096 ;;
    esac
}

# One value of libFuzzer's final "stat::" lines, or of its last status line ("cov: 123").
stat() {
    sed -n "s/^stat::$2: *//p" "$1" | tail -n 1
}
status_field() {
    grep -E '^#[0-9]+' "$1" | tail -n 1 | sed -n "s/.* $2: \([^ ]*\).*/\1/p"
}

summary="$fuzz_dir/logs/summary.txt"
: >"$summary"
failed=0
for t in $targets; do
    log="$fuzz_dir/logs/$t.log"
    artifacts="$fuzz_dir/artifacts/$t"
    mkdir -p "$artifacts" "$fuzz_dir/corpus/$t"
    before=$(find "$artifacts" -type f | wc -l)
    # Debug assertions on (-a): integer overflow is a finding too.
    $cargo fuzz build --fuzz-dir "$fuzz_dir" -a "$t" >"$log" 2>&1 || {
        cat "$log" >&2
        exit 1
    }
    start=$(date +%s)
    rc=0
    $cargo fuzz run --fuzz-dir "$fuzz_dir" -a "$t" "$fuzz_dir/corpus/$t" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 -print_final_stats=1 >>"$log" 2>&1 || rc=$?
    elapsed=$(($(date +%s) - start))
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="? (exit $rc)"
    fi
    [ "$rc" -eq 0 ] || failed=1
    line="$t: ${elapsed}s, $(stat "$log" number_of_executed_units) execs, $(stat "$log" average_exec_per_sec) exec/s, corpus $(status_field "$log" corp) ($(find "$fuzz_dir/corpus/$t" -type f | wc -l) files), cov $(status_field "$log" cov), ft $(status_field "$log" ft), peak rss $(stat "$log" peak_rss_mb) MB, crashes $crashes"
    echo "$line" | tee -a "$summary"
    if [ "$rc" -ne 0 ]; then
        grep -m 1 -A 3 -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$log" >&2 || true
        echo "  log: $log; inputs: $artifacts" >&2
    fi
done
exit "$failed"
