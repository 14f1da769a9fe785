#!/usr/bin/env bash
# Builds kiln's CUDA programs where cubecl's LLVM cannot be downloaded, and packs them for a GPU
# machine that reaches no network.
#
#   scripts/build_cuda_offline.sh                    # both CUDA compilers (see below)
#   scripts/build_cuda_offline.sh --compiler nvrtc   # or llvm
#
# Output, under target/gpu/ (ignored by git):
#   bin/gpu_bundle-llvm, bin/gpu_bundle-nvrtc   stripped, one binary each (examples/gpu_bundle.rs):
#                                               train_gpt, bench_gpt, bench_generate, hf_logits
#                                               and the device report under one roof (~135 MiB,
#                                               most of it LLVM, linked statically)
#   carry/gpu_bundle-*.xz                       the same, xz-compressed (~25 MiB each): what is
#                                               carried to a GPU machine (64 MiB allowed), where
#                                               scripts/gpu_check.sh unpacks them
#   build.json                                  what was built, sizes, the libraries each needs
#
# Why a script: kiln's `cuda` feature reaches cubecl-cuda, which links LLVM through the build
# dependency tracel-llvm-bundler. Its build script downloads LLVM 23.1 from GitHub unless the
# marker file `.tracel-llvm-installed` already sits in
# `$XDG_DATA_HOME/tracel/tracel-llvm-<version>/`. On a machine that reaches Debian's packages
# but not GitHub, Debian's LLVM 22 in that folder works: `include/` and `lib/` linked to it, and
# an `llvm-config` that names libz3 by `-lz3` (Debian's prints an absolute path, which the
# bundler cannot turn into a library name). A machine with internet needs none of this:
# `cargo build --release --features cuda` downloads LLVM itself.
#
# The two compilers: cubecl-cuda turns kernels into PTX either through LLVM's NVPTX backend
# (its default, needs only the driver on the GPU machine; LLVM 22 emits PTX up to 9.0) or as
# CUDA C++ through NVIDIA's NVRTC (`--features cuda-nvrtc`; needs the toolkit's libnvrtc.so on
# the GPU machine, and is the path Burn has used longest). Which one a GPU machine can run is
# not known in advance, so both are built; scripts/gpu_check.sh picks.
#
# cudarc binds the CUDA API of one toolkit version; without nvcc it would take the newest
# (13.x), whose entry points a 12.x driver lacks. CUDARC_CUDA_VERSION (default 12040, CUDA
# 12.4: what an H200's minimum driver, 550, provides) sets it; newer drivers run older APIs.
set -euo pipefail
cd "$(dirname "$0")/.."

compilers="llvm nvrtc"
while [ $# -gt 0 ]; do
  case "$1" in
    --compiler) compilers="$2"; shift 2 ;;
    *) echo "unknown argument $1 (expected --compiler llvm|nvrtc)" >&2; exit 2 ;;
  esac
done
for c in $compilers; do
  case "$c" in llvm|nvrtc) ;; *) echo "--compiler must be llvm or nvrtc, not $c" >&2; exit 2 ;; esac
done

llvm_major=22
bundler=23.1.0-4
locked=$(grep -A1 '^name = "tracel-llvm-bundler"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if [ "$locked" != "$bundler" ]; then
  echo "Cargo.lock has tracel-llvm-bundler $locked; this script sets up the folder of $bundler" >&2
  exit 1
fi

llvm=/usr/lib/llvm-$llvm_major
if [ ! -x "$llvm/bin/llvm-config" ]; then
  echo "== installing Debian's LLVM $llvm_major (llvm-$llvm_major-dev libpolly-$llvm_major-dev libzstd-dev)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "llvm-$llvm_major-dev" \
    "libpolly-$llvm_major-dev" libzstd-dev >/dev/null
fi

# The bundler's folder, in a data directory of this build's own (not the user's ~/.local).
xdg="$PWD/target/gpu/xdg"
prefix="$xdg/tracel/tracel-llvm-$bundler"
mkdir -p "$prefix/bin"
ln -sfn "$llvm/include" "$prefix/include"
ln -sfn "$llvm/lib" "$prefix/lib"
cat >"$prefix/bin/llvm-config" <<EOF
#!/bin/sh
# Debian's llvm-config with absolute library paths (/usr/lib/.../libz3.so) turned into -l names.
"$llvm/bin/llvm-config" "\$@" | sed -E 's#/[^ ]*/lib([A-Za-z0-9_+-]+)\\.so[.0-9]*#-l\\1#g'
EOF
chmod +x "$prefix/bin/llvm-config"
# Created once: the bundler's build script reruns when the marker's time changes, and with it
# cubecl-llvm and everything above it.
[ -e "$prefix/.tracel-llvm-installed" ] || touch "$prefix/.tracel-llvm-installed"

export XDG_DATA_HOME="$xdg"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-12040}"
mkdir -p target/gpu/bin target/gpu/carry
entries=()
for compiler in $compilers; do
  # wgpu (WGSL) beside CUDA, not `vulkan`: cubecl's SPIR-V compiler, once compiled in, takes
  # over wgpu's Vulkan path too, and it crashes inside lavapipe (docs/backends.md), so the
  # bundle's CPU-side check (parity on lavapipe) could not run.
  features="cuda,wgpu"
  [ "$compiler" = nvrtc ] && features="$features,cuda-nvrtc"
  echo "== building gpu_bundle with --features $features (CUDA API $CUDARC_CUDA_VERSION)"
  start=$(date +%s)
  # One target folder for both: they differ in cubecl-cuda's compiler feature only.
  cargo build --release --target-dir target/gpu/target --features "$features" --example gpu_bundle
  bin="target/gpu/bin/gpu_bundle-$compiler"
  cp target/gpu/target/release/examples/gpu_bundle "$bin"
  strip "$bin"
  xz -9 -T2 -c "$bin" >"target/gpu/carry/gpu_bundle-$compiler.xz.part"
  mv "target/gpu/carry/gpu_bundle-$compiler.xz.part" "target/gpu/carry/gpu_bundle-$compiler.xz"
  seconds=$(($(date +%s) - start))
  needs=$(ldd "$bin" | awk '{print $1}' | grep -v '^/' | sort | paste -sd, -)
  echo "   $bin: $(du -m "$bin" | cut -f1) MiB after strip ($(du -m "target/gpu/carry/gpu_bundle-$compiler.xz" | cut -f1) MiB in xz), $seconds s, needs $needs"

  # Here, without a CUDA driver, asking for cuda must be a typed error, not a panic or a
  # link error: the check the GPU-less build machine can make of a CUDA binary.
  set +e
  report=$("$bin" report --device cuda 2>&1)
  status=$?
  set -e
  if [ -e /dev/nvidiactl ]; then
    echo "   (a GPU driver is present here; skipping the no-driver check)"
  elif [ "$status" -ne 1 ] || ! grep -q 'no CUDA driver: libcuda.so was not found' <<<"$report"; then
    echo "expected a typed 'no CUDA driver' error from $bin, got (exit $status):" >&2
    echo "$report" >&2
    exit 1
  else
    echo "   no driver here: reported as a typed error, as it should be"
  fi
  entries+=("{\"compiler\":\"$compiler\",\"features\":\"$features\",\"binary\":\"$bin\",\"bytes\":$(stat -c %s "$bin"),\"xz_bytes\":$(stat -c %s "target/gpu/carry/gpu_bundle-$compiler.xz"),\"build_seconds\":$seconds,\"needs\":\"$needs\"}")
done
( IFS=,; echo "{\"cuda_api\":\"$CUDARC_CUDA_VERSION\",\"llvm\":\"$("$llvm/bin/llvm-config" --version)\",\"bundles\":[${entries[*]}]}" ) \
  >target/gpu/build.json
cat target/gpu/build.json
