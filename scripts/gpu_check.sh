#!/usr/bin/env bash
# kiln's GPU checks, from prebuilt binaries only: the GPU machines this project borrows reach
# no network and build nothing, so scripts/build_cuda_offline.sh builds target/gpu/bin/ here
# and the machine runs this script with that folder carried.
#
#   scripts/gpu_check.sh                # on a GPU machine
#   scripts/gpu_check.sh --cpu-only     # anywhere: the parts that need no GPU (parity against
#                                       # lavapipe, and a GPU request refused on a software adapter)
#   scripts/gpu_check.sh --budget 420   # seconds for the whole run (default 480); steps that
#                                       # would not fit are recorded as skipped
#
# Output: one JSON file, $OUT/gpu_check.json (target/gpu-check/ without $OUT), each step's log
# beside it. Exit status 1 when a step that must pass failed.
#
# Steps on a GPU machine:
#   1. the machine: GPU name, driver, memory (nvidia-smi), which of libcuda, libnvrtc, libvulkan
#      and NVIDIA's Vulkan ICD are installed;
#   2. for each carried CUDA compiler (LLVM/NVPTX and NVRTC, see build_cuda_offline.sh): the
#      device report and backend parity flex vs cuda (the tolerances CI holds lavapipe to); the
#      first that passes (NVRTC preferred) runs the rest;
#   3. parity flex vs wgpu on the card's Vulkan (needs NVIDIA's Vulkan ICD; a software adapter
#      fails);
#   4. the main job on cuda (held-out accuracy, seconds, params_sha256);
#   5. bench_gpt at GPT-2 small's size (d768, 12 layers, 12 heads, 1024 tokens, vocab 50304)
#      in f32 and bf16: tokens/s and MFU against the card's dense peak;
#   6. bench_generate (KV-cache decoding, batch 1 and 8);
#   7. NCCL: recorded as not run (below).
set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
budget=480
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-only) mode=cpu; shift ;;
    --budget) budget="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
start=$(date +%s)
# wgpu's Vulkan loader wants a runtime directory; containers often have none.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# The binaries: target/gpu/bin/ where they were built, else the carried target/gpu/carry/*.xz
# unpacked (xz, or Python's lzma where xz is not installed).
bins="${KILN_GPU_BIN:-target/gpu/bin}"
if ! ls "$bins"/gpu_bundle-* >/dev/null 2>&1; then
  bins="$scratch/bin"
  mkdir -p "$bins"
  for packed in target/gpu/carry/gpu_bundle-*.xz; do
    [ -e "$packed" ] || { echo "no target/gpu/bin/ or target/gpu/carry/: run scripts/build_cuda_offline.sh" >&2; exit 1; }
    unpacked="$bins/$(basename "$packed" .xz)"
    xz -dc "$packed" >"$unpacked" 2>/dev/null ||
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' \
        "$packed" >"$unpacked" || { echo "cannot unpack $packed" >&2; exit 1; }
    chmod +x "$unpacked"
  done
fi
failed=0
fields=()

# A JSON string (the few characters a log line can hold that JSON escapes).
jstr() { printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/ /g' | tr '\n' ' ')"; }
# The value of the last `key: value` line of a log, as a JSON number or string (null if none).
figure() {
  local v
  v=$(grep -E "^$2: " "$1" 2>/dev/null | tail -1 | sed -E "s/^$2: //")
  if [ -z "$v" ]; then echo null
  elif [[ "$v" =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then echo "$v"
  else jstr "$v"; fi
}
left() { echo $((budget - ($(date +%s) - start))); }

# run NAME MUST_PASS TIMEOUT COMMAND...: runs a step within what is left of the budget, logs it
# to $out/NAME.log, and sets $status and $seconds.
run() {
  local name=$1 must=$2 limit=$3
  shift 3
  local remaining
  remaining=$(($(left) - 5))
  if [ "$remaining" -lt 20 ]; then
    status=skipped seconds=0
    echo "== $name: skipped (budget spent)"
    [ "$must" = must ] && failed=1
    return
  fi
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  echo "== $name (at most ${limit}s): $*"
  local t0
  t0=$(date +%s%N)
  timeout --kill-after=5 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  seconds=$(awk -v ns=$(($(date +%s%N) - t0)) 'BEGIN { printf "%.1f", ns / 1e9 }')
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status="exit $rc" ;;
  esac
  tail -3 "$out/$name.log" | sed 's/^/   /'
  if [ "$status" != ok ] && [ "$must" = must ]; then failed=1; fi
}
record() { fields+=("$(jstr "$1"): $2"); }

links="$scratch/links"
mkdir -p "$links"
# link BUNDLE: the program names of examples/gpu_bundle.rs, pointing at BUNDLE.
link() {
  for program in train_gpt bench_gpt bench_generate hf_logits; do
    ln -sfn "$(realpath "$1")" "$links/$program"
  done
}

if [ "$mode" = cpu ]; then
  bundle=$(ls "$bins"/gpu_bundle-* 2>/dev/null | head -1)
  [ -n "$bundle" ] || { echo "no $bins/gpu_bundle-*: run scripts/build_cuda_offline.sh first" >&2; exit 1; }

  run parity_lavapipe must 300 "$bundle" report --device wgpu:cpu --parity
  record parity_lavapipe "{\"status\": $(jstr "$status"), \"seconds\": $seconds}"
  # Asked for a GPU where there is only lavapipe, the report must fail and say so.
  run refuse_software may 120 "$bundle" report --device wgpu
  if [ "$status" = "exit 1" ] && grep -q 'opened the software adapter' "$out/refuse_software.log"; then
    refused=true
  else
    refused=false
    failed=1
  fi
  record software_adapter_refused "$refused"
else
  # 1. The machine.
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)
  libs=$(ldconfig -p 2>/dev/null | grep -oE 'lib(cuda|nvrtc|vulkan|nccl)\.so[.0-9]*' | sort -u | paste -sd, -)
  icds=$(ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null | grep -v ':$' | paste -sd, -)
  echo "GPU: $gpu; libraries: $libs; Vulkan ICDs: $icds"
  record gpu "$(jstr "$gpu")"
  record libraries "$(jstr "$libs")"
  record vulkan_icds "$(jstr "$icds")"
  name=$(echo "$gpu" | cut -d, -f1)
  # Dense peaks in TFLOP/s (NVIDIA's data sheets): fp32 without tensor cores, bf16 with.
  case "$name" in
    *H200*|*"H100 80GB HBM3"*|*"H100 SXM"*) peak_f32=67; peak_bf16=989 ;;
    *"H100 NVL"*) peak_f32=60; peak_bf16=835 ;;
    *H100*) peak_f32=51; peak_bf16=756 ;;
    *A100*) peak_f32=19.5; peak_bf16=312 ;;
    *) peak_f32=; peak_bf16= ;;
  esac

  # 2. Which CUDA compiler works here.
  chosen=
  for compiler in nvrtc llvm; do
    bundle="$bins/gpu_bundle-$compiler"
    [ -x "$bundle" ] || continue
    run "cuda_parity_$compiler" may 150 "$bundle" report --device cuda --parity
    record "cuda_parity_$compiler" "{\"status\": $(jstr "$status"), \"seconds\": $seconds}"
    if [ "$status" = ok ] && [ -z "$chosen" ]; then chosen=$compiler; fi
  done
  record cuda_compiler "$(jstr "${chosen:-none}")"
  if [ -z "$chosen" ]; then
    echo "no carried CUDA build passed parity; see $out/cuda_parity_*.log"
    failed=1
  else
    bundle="$bins/gpu_bundle-$chosen"
    link "$bundle"

    # 3. wgpu (WGSL) on the same card's Vulkan.
    run parity_wgpu may 120 "$bundle" report --device wgpu --parity
    record parity_wgpu "{\"status\": $(jstr "$status"), \"seconds\": $seconds}"

    # 4. The main job.
    run main_job must 240 "$links/train_gpt" --device cuda
    log="$out/main_job.log"
    record main_job "{\"status\": $(jstr "$status"), \"seconds\": $seconds, \"held_out_accuracy\": $(figure "$log" 'held-out accuracy'), \"params_sha256\": $(figure "$log" params_sha256), \"trained\": $(jstr "$(grep -E '^trained ' "$log" | tail -1)")}"

    # 5. Training throughput at GPT-2 small's size.
    for precision in f32 bf16; do
      run "bench_gpt_$precision" must 150 "$links/bench_gpt" --device cuda --d-model 768 \
        --layers 12 --heads 12 --seq 1024 --batch 8 --vocab 50304 --steps 5 --warmup 2 \
        --precision "$precision"
      log="$out/bench_gpt_$precision.log"
      tflops=$(figure "$log" model_tflops_per_s)
      peak=$peak_f32
      [ "$precision" = bf16 ] && peak=$peak_bf16
      mfu=null
      if [ -n "$peak" ] && [ "$tflops" != null ]; then mfu=$(awk -v t="$tflops" -v p="$peak" 'BEGIN { printf "%.4f", t / p }'); fi
      record "bench_gpt_$precision" "{\"status\": $(jstr "$status"), \"seconds\": $seconds, \"tokens_per_s\": $(figure "$log" tokens_per_s), \"step_ms\": $(figure "$log" kiln_step_ms), \"model_tflops_per_s\": $tflops, \"peak_tflops\": ${peak:-null}, \"mfu\": $mfu}"
    done

    # 6. Decoding.
    run bench_generate may 120 "$links/bench_generate" --device cuda --batch 1,8 --rounds 2
    log="$out/bench_generate.log"
    record bench_generate "{\"status\": $(jstr "$status"), \"seconds\": $seconds, \"decode_tokens_per_s_b1\": $(figure "$log" f32_decode_tokens_per_s_b1), \"decode_tokens_per_s_b8\": $(figure "$log" f32_decode_tokens_per_s_b8)}"
  fi

  # 7. NCCL needs one GPU per rank (it refuses two ranks on one device), and the bundles are
  # built without MPI, which these machines do not have; a machine with 2+ GPUs and Open MPI
  # runs kiln-dist's `nccl` test instead (docs/distributed.md).
  record nccl "$(jstr "not run: one GPU, and NCCL needs one per rank")"
fi

record failed "$([ $failed = 0 ] && echo false || echo true)"
record total_seconds "$(($(date +%s) - start))"
( IFS=,; echo "{${fields[*]}}" ) >"$out/gpu_check.json"
cat "$out/gpu_check.json"
exit $failed
