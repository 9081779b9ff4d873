#!/usr/bin/env python3
"""Compiles baton's run-time CUDA kernels the way the binary does, without a GPU.

The `cuda` feature compiles `src/models/wan/*.cu` with NVRTC at first use on
the card. This script runs the same NVRTC (the CUDA 13 wheels that
scripts/build_cuda.sh installs) for each architecture the binary may meet, then
assembles the PTX with ptxas and prints registers, spills and shared memory per
kernel, so a kernel that does not compile, spills or overflows shared memory is
caught on a machine with no card.

    scripts/check_kernels.py [CU13_DIR]    (default: ../cuda13/venv/.../nvidia/cu13)

Exits non-zero on a compile error, a spill, or more than 48 KiB of static
shared memory.
"""
import ctypes
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = sorted(glob.glob(os.path.join(ROOT, "src", "models", "wan", "*.cu")))
ARCHS = ["sm_80", "sm_89", "sm_90"]


def cu13_dir():
    if len(sys.argv) > 1:
        return sys.argv[1]
    hits = glob.glob(os.path.join(ROOT, "..", "cuda13", "venv", "lib", "python3*", "site-packages", "nvidia", "cu13"))
    if not hits:
        sys.exit("no CUDA 13 wheels found: run scripts/build_cuda.sh first or pass the nvidia/cu13 folder")
    return hits[0]


def nvrtc_ptx(lib, src, name, arch):
    prog = ctypes.c_void_p()
    check = lambda rc, what: rc == 0 or sys.exit(f"{name}: NVRTC {what} failed ({rc})")
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None), "create")
    opts = [f"--gpu-architecture={arch}".encode()]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        print(log.value.decode(errors="replace"))
        sys.exit(f"{name}: NVRTC could not compile it for {arch}")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode()


def main():
    cu13 = cu13_dir()
    # NVRTC opens its builtins library by name at compile time.
    for b in glob.glob(os.path.join(cu13, "lib", "libnvrtc-builtins.so.13*")):
        ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(os.path.join(cu13, "lib", "libnvrtc.so.13"))
    ptxas = os.path.join(cu13, "bin", "ptxas")
    bad = False
    for path in KERNELS:
        src = open(path).read()
        name = os.path.basename(path)
        for arch in ARCHS:
            ptx = nvrtc_ptx(lib, src, name, arch)
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(ptx)
            out = subprocess.run(
                [ptxas, f"-arch={arch}", "-v", "-o", os.devnull, f.name],
                capture_output=True, text=True,
            )
            os.unlink(f.name)
            if out.returncode != 0:
                print(out.stderr)
                sys.exit(f"{name}: ptxas rejected the PTX for {arch}")
            kernel = None
            for line in out.stderr.splitlines():
                m = re.search(r"Compiling entry function '(\w+)'", line)
                if m:
                    kernel = m.group(1)
                spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
                if spill and (int(spill.group(1)) or int(spill.group(2))):
                    print(f"{name} {arch} {kernel}: spills ({line.strip()})")
                    bad = True
                m = re.search(r"Used (\d+) registers", line)
                if m:
                    sm = re.search(r"(\d+) bytes smem", line)
                    smem = int(sm.group(1)) if sm else 0
                    print(f"{name} {arch} {kernel}: {m.group(1)} registers, {smem} bytes shared")
                    if smem > 48 * 1024:
                        print(f"  more than 48 KiB of static shared memory")
                        bad = True
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
