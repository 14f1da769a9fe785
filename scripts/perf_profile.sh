#!/usr/bin/env bash
# Where a training step's time goes: `perf record` on bench_gpt (the probe config of
# scripts/bench_vs_pytorch.py), then the share of each function, heaviest first.
#
#   cargo build --release --example bench_gpt
#   bash scripts/perf_profile.sh [BINARY] [TOP]
#
# BINARY defaults to target/release/examples/bench_gpt (pass a copy built from another commit
# to compare); TOP (default 15) is how many functions to print. Needs `perf` (linux-tools) and
# permission to profile (perf_event_paranoid <= 2, or root). Model initialisation is part of
# the recording; 12 timed steps make it a small share.
set -euo pipefail
binary=${1:-target/release/examples/bench_gpt}
top=${2:-15}
data=$(mktemp /tmp/kiln-perf.XXXXXX)
trap 'rm -f "$data"' EXIT
perf record -q -o "$data" -- "$binary" --steps 12 --warmup 2 > /dev/null
perf report -i "$data" --no-children --sort symbol --percent-limit 0.5 --stdio 2> /dev/null \
    | grep -E '^ +[0-9.]+%' | head -n "$top" | sed -E 's/ +$//'
