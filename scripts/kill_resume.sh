#!/usr/bin/env bash
# Kills the main job with SIGKILL at random moments (1 to 3 times per trial, during steps, evals
# and checkpoint writes alike), resumes it each time until it finishes, and checks that every
# trial ends with the uninterrupted run's params_sha256.
#
# Usage: scripts/kill_resume.sh [TRIALS] [STEPS]     (defaults: 10 trials, 300 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-10}
steps=${2:-300}
cargo build --release --example train_gpt 2>/dev/null
bin=target/release/examples/train_gpt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(--max-steps "$steps" --checkpoint-every 25 --seed 7)

begin=$(date +%s%N)
reference=$("$bin" "${args[@]}" --checkpoint-dir "$work/reference" 2>/dev/null | grep params_sha256)
duration_ms=$((($(date +%s%N) - begin) / 1000000))
echo "uninterrupted: $reference ($((duration_ms / 1000)) s)"

identical=0
kills=0
for trial in $(seq 1 "$trials"); do
  dir="$work/trial$trial"
  resume=()
  for _ in $(seq 1 $((RANDOM % 3 + 1))); do
    "$bin" "${args[@]}" --checkpoint-dir "$dir" "${resume[@]}" >/dev/null 2>"$work/stderr" &
    pid=$!
    sleep "$(awk -v ms="$duration_ms" -v r="$RANDOM" 'BEGIN { printf "%.2f", ms * r / 32768 / 1000 }')"
    if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
    wait "$pid" 2>/dev/null || true
    resume=(--resume)
  done
  if ! result=$("$bin" "${args[@]}" --checkpoint-dir "$dir" --resume 2>"$work/stderr" | grep params_sha256); then
    echo "trial $trial: the resumed run failed:"; cat "$work/stderr"; continue
  fi
  if [ "$result" = "$reference" ]; then
    identical=$((identical + 1))
  else
    echo "trial $trial: $result differs"
  fi
done
echo "$identical of $trials trials ended bit-identical to the uninterrupted run ($kills SIGKILLs in all)"
[ "$identical" = "$trials" ]
