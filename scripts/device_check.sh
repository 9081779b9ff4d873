#!/usr/bin/env bash
# The one-shot GPU check: parity on the card (f32 and bf16 tolerances, both
# key layouts, the sampling recipes, offload and reload), the demo (its
# streamed and resident latents must agree), then the device table of
# `baton bench device --bounds`. Exits non-zero when any step fails: a parity
# bound, the demo's latents, delete_model not back to the driver's baseline
# (+-64 MiB), the leak flag, or a speed bound (14B block at 75,600 tokens
# <= 0.6 s, attention >= 50% of a bf16 GEMM's TFLOP/s, fp8 block <= 1.1x
# bf16, load >= 8 GB/s). Meant to finish well inside 8 minutes of device time.
#
#   scripts/device_check.sh [--full]   on a CUDA machine
#   scripts/device_check.sh --dry-run  the same steps on the CPU, small sizes
#
# The binary: $BATON_BIN, else .carry/baton or .carry/baton.gz (built
# elsewhere by scripts/build_cuda.sh and carried; see the README's GPU
# section), else one built here with cargo (the cuda feature for a card). A
# GPU machine without a Rust toolchain needs the carried one.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

device=cuda:0
bench=(--size-gb 2 --width 832 --height 480 --frames 33 --context 512 --repeats 3
       --block-tokens 32760,75600 --attention-tokens 32760 --bounds)
# --full: also step the whole 14B expert (writes ~28 GB; about a minute
# more of device time).
[[ " $* " == *" --full "* ]] && bench+=(--full-expert)
if [[ ${1:-} == --dry-run ]]; then
  # The same sections at sizes a CPU runs in a minute; the speed bounds are
  # a card's, so they are printed by the card run only.
  device=cpu
  bench=(--size-gb 0.6 --width 160 --height 160 --frames 9 --context 64 --repeats 2
         --block-tokens 64 --attention-tokens 1024 --vae-latent 2,8,8)
fi
# The CPU widens bf16 weights at every forward, so the 14B block is slow there.
table_limit=480
[[ $device == cpu ]] && table_limit=1200

bin=${BATON_BIN:-}
if [[ -z $bin && -x .carry/baton ]]; then
  bin=.carry/baton
elif [[ -z $bin && -f .carry/baton.gz ]]; then
  bin=$(mktemp -d)/baton
  gunzip -c .carry/baton.gz > "$bin"
  chmod +x "$bin"
fi
if [[ -z $bin ]]; then
  if ! command -v cargo >/dev/null; then
    echo "no baton binary (set BATON_BIN or carry one to .carry/baton) and no cargo to build one" >&2
    exit 2
  fi
  features=()
  [[ $device == cuda* ]] && features=(--features cuda)
  cargo build --release "${features[@]}"
  bin=target/release/baton
fi

if [[ $device == cuda* ]]; then
  # The CUDA 13 runtime libraries (cudart, cublas, cublasLt, curand) may sit
  # in a pip wheel's folder rather than on the loader path.
  if ldd "$bin" | grep -q 'not found'; then
    for d in $(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null) \
             /usr/local/cuda/lib64 \
             $(find / -xdev -name 'libcublas.so.13*' -printf '%h\n' 2>/dev/null | head -1); do
      [[ -d $d ]] && export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      ldd "$bin" | grep -q 'not found' || break
    done
  fi
  echo "== libraries"
  ldd "$bin" | grep -E 'libcuda|cublas|curand|cudart|not found' || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
step() {
  local name=$1; shift
  local t0=$(date +%s)
  echo "== $name"
  if "$@"; then
    echo "-- $name: ok ($(( $(date +%s) - t0 )) s)"
  else
    echo "-- $name: FAILED ($(( $(date +%s) - t0 )) s)"
    status=1
  fi
}

step "predict parity on $device" timeout 180 "$bin" run --device "$device" --out "$out" tests/scripts/predict_parity.rhai
step "sampling parity on $device" timeout 180 "$bin" run --device "$device" --out "$out" tests/scripts/sampling_parity.rhai
step "offload and reload on $device" timeout 120 "$bin" run --device "$device" --out "$out" tests/scripts/offload_parity.rhai
# The demo samples the same latent with both experts loaded (streaming) and
# one at a time (resident); on one device the two must agree.
demo() {
  local log=$out/demo.log
  timeout 180 "$bin" run --device "$device" --out "$out" scripts/demo.rhai | tee "$log" || return 1
  local err
  err=$(sed -n 's/.*same result : rel L2 difference \([0-9.eE+-]*\).*/\1/p' "$log" | tail -1)
  [[ -n $err ]] || { echo "the demo printed no 'same result' line"; return 1; }
  awk -v e="$err" 'BEGIN { if (e + 0 > 1e-6) { print "streamed and resident latents differ: rel L2 " e " > 1e-6"; exit 1 } }'
}
step "demo pipeline on $device" demo
step "device table on $device" timeout "$table_limit" "$bin" bench device --device "$device" "${bench[@]}" --dir "$out"

echo "device check finished in $(( $(date +%s) - started )) s, status $status"
exit $status
