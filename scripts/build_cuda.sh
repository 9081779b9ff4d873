#!/usr/bin/env bash
# Builds baton with the `cuda` feature on a machine without a GPU or a CUDA
# toolkit, and leaves the binary in .carry/baton for a GPU machine that has
# a driver but no Rust toolchain (see the README's GPU section), stripped
# and gzipped as .carry/baton.gz (about 16 MB; the binary is 64 MB, most of
# it candle's compiled kernels).
#
#   scripts/build_cuda.sh [TOOLCHAIN_DIR]   (default: ../cuda13)
#
# The toolkit comes from NVIDIA's CUDA 13.0 wheels on PyPI: 13.0 exactly,
# because candle's kernels ship as PTX that the driver compiles, and a newer
# nvcc writes a PTX version an R580 driver (CUDA 13.0) rejects. The link step
# needs a libcuda.so; a stub that answers CUDA_ERROR_NO_DEVICE to every call
# stands in for it here. It is never shipped: the GPU machine's driver
# provides the real libcuda.so.1 at run time.
#
# Environment: CUDA_COMPUTE_CAP (default 90, Hopper), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(realpath -m "${1:-../cuda13}")
venv=$root/venv
if [[ ! -x $venv/bin/pip ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q \
  "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" \
  "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-nvrtc==13.0.88" \
  "nvidia-curand==10.4.0.35" "nvidia-cublas==13.0.2.14"
cu13=$(realpath "$venv"/lib/python3*/site-packages/nvidia/cu13)

# The wheels ship only versioned libraries; the linker wants the plain names.
(cd "$cu13/lib" && for f in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13 libcurand.so.10; do
  ln -sf "$f" "${f%%.so*}.so"
done)

# A link-time libcuda stub with every driver symbol cudarc may resolve.
cargo fetch -q
syms=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)/src/driver/sys/mod.rs
mkdir -p "$cu13/lib/stubs"
grep -oP 'load::<_F>\("\K[A-Za-z0-9_]+' "$syms" | sort -u \
  | awk '{print "int " $1 "(void){return 100;}"}' > "$root/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 "$root/libcuda_stub.c" -o "$cu13/lib/stubs/libcuda.so"

export PATH=$cu13/bin:$PATH CUDA_HOME=$cu13 CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
cargo build --release --features cuda
target=${CARGO_TARGET_DIR:-target}
mkdir -p .carry
strip -o .carry/baton "$target/release/baton"
gzip -9 -c .carry/baton > .carry/baton.gz
rm .carry/baton
echo "built .carry/baton.gz ($(du -h .carry/baton.gz | cut -f1)); it needs libcuda.so.1 (driver 580+) and the CUDA 13 cudart, cublas, cublasLt and curand libraries at run time"
