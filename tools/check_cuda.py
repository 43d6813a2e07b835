#!/usr/bin/env python3
"""Compile-only check of the CUDA sources, for machines without a GPU (TOOLCHAIN.md §5).

* every csrc/**/*.cu: ``nvcc -c`` for sm_80 and sm_90 with the flags of the real build, into a temp dir;
* every csrc/include/fastbayes/*.h: included on its own by a .cu (self-contained, parses under nvcc), and
  philox.h, which no .cu uses yet, instantiated in a device kernel;
* csrc/cuda/*.cpp (the tensor glue): ``g++ -fsyntax-only`` with -DFASTBAYES_WITH_CUDA,
  -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE (the CPU torch wheel lacks c10's generated cuda_cmake_macros.h)
  and the CUDA include dir of the nvcc found on PATH.

Exits 1 with the compiler's message on the first failure, 0 when everything compiles, and 0 with
'skipped: nvcc not found' where there is no nvcc.  ``--ptxas-info`` also prints one line per kernel and arch
(registers, spill bytes, shared memory, demangled name); with ``--ptxas-info`` any spill fails the check.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
ARCHS = ("80", "90")

PHILOX_PROBE = r"""
#include "fastbayes/philox.h"
__global__ void fb_probe_philox(float* out, unsigned long long seed, unsigned long long offset, long long n) {
  const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i < n) out[i] = fastbayes::philox_uniform(seed, offset + (unsigned long long)i);
}
"""


def cuda_include_dirs(nvcc: str) -> list[str]:
    """Include dirs of the toolkit behind `nvcc` (a wrapper script is fine: nvcc itself reports them)."""
    dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True)
    dirs = []
    for line in (dry.stdout + dry.stderr).splitlines():
        m = re.match(r"#\$ (INCLUDES|SYSTEM_INCLUDES)=(.*)", line.strip())
        if m:
            toks = shlex.split(m.group(2))
            dirs += [t[2:] if t.startswith("-I") else t for t in toks if t not in ("-isystem",)]
    dirs = [os.path.normpath(d) for d in dirs if d and os.path.isdir(d)]
    if not dirs:  # fall back to <toolkit>/include next to the resolved binary
        dirs = [os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(nvcc)), "..", "include"))]
    return list(dict.fromkeys(dirs))


def torch_flags() -> tuple[list[str], list[str]]:
    """(include flags, defines) shared by nvcc and g++; the CPU wheel's include_paths() are enough."""
    import torch.utils.cpp_extension as ce

    incs = ["-I" + os.path.join(CSRC, "include"), "-I" + sysconfig.get_paths()["include"]]
    incs += ["-I" + p for p in ce.include_paths()]
    defines = ["-DFASTBAYES_WITH_CUDA", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-DTORCH_API_INCLUDE_EXTENSION_H",
               "-DTORCH_EXTENSION_NAME=fastbayes_cuda_check"]
    return incs, defines


def run(cmd: list[str], what: str) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        print(f"FAIL {what}\n$ {shlex.join(cmd)}\n{out}", file=sys.stderr)
        sys.exit(1)
    print(f"ok   {what} ({time.perf_counter() - t0:.1f} s)")
    return out


def ptxas_report(out: str) -> list[tuple[str, str, int, int, str]]:
    """(arch, kernel, registers, spill bytes, smem) per entry function from ``-Xptxas -v`` output."""
    rows, cur = [], None
    for line in out.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
        if m:
            cur = [m.group(2), m.group(1), 0, 0, "0 bytes smem"]
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur[3] = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur[2] = int(m.group(1))
            sm = re.search(r"(\d+ bytes smem)", line)
            cur[4] = sm.group(1) if sm else "0 bytes smem"
    names = [r[1] for r in rows]
    filt = shutil.which("c++filt")
    if filt and names:
        dem = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
        if len(dem) == len(names):
            for r, d in zip(rows, dem):
                # drop the anonymous-namespace noise and the parameter list
                r[1] = re.sub(r"\(anonymous namespace\)::|fastbayes::", "", d).split("(")[0]
    return [tuple(r) for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptxas-info", action="store_true", help="print registers/spills of every kernel")
    ap.add_argument("only", nargs="*", help="check only these .cu/.cpp files (default: all, plus the headers)")
    args = ap.parse_args()

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("skipped: nvcc not found")
        return 0
    import torch.utils.cpp_extension as ce

    incs, defines = torch_flags()
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    nvcc_flags = ["-std=c++20", "-O3", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", *ce.COMMON_NVCC_FLAGS,
                  *gencode, *defines, *incs]
    if args.ptxas_info:
        nvcc_flags += ["-Xptxas", "-v"]
    cu_files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(CSRC) for f in fs if f.endswith(".cu"))
    headers = sorted(os.path.join(CSRC, "include", "fastbayes", f)
                     for f in os.listdir(os.path.join(CSRC, "include", "fastbayes")) if f.endswith(".h"))
    glue = sorted(os.path.join(CSRC, "cuda", f) for f in os.listdir(os.path.join(CSRC, "cuda")) if f.endswith(".cpp"))
    if args.only:
        only = {os.path.realpath(f) for f in args.only}
        cu_files = [f for f in cu_files if os.path.realpath(f) in only]
        glue = [f for f in glue if os.path.realpath(f) in only]
        headers = []
    t0 = time.perf_counter()
    spills: list[tuple[str, str, int]] = []
    with tempfile.TemporaryDirectory(prefix="fb_check_cuda_") as td:
        for i, f in enumerate(cu_files):
            out = run([nvcc, "-c", f, "-o", os.path.join(td, f"{i}.o"), *nvcc_flags],
                      f"nvcc sm_{'/sm_'.join(ARCHS)} {os.path.relpath(f, ROOT)}")
            if args.ptxas_info:
                for arch, name, regs, spill, smem in ptxas_report(out):
                    print(f"     {arch} {regs:4d} regs {spill:4d} B spill {smem:>16}  {name}")
                    if spill:
                        spills.append((arch, name, spill))
        for i, h in enumerate(headers):
            probe = os.path.join(td, f"header_{i}.cu")
            with open(probe, "w") as fh:
                fh.write(f'#include "fastbayes/{os.path.basename(h)}"\n')
                if os.path.basename(h) == "philox.h":
                    fh.write(PHILOX_PROBE)
            run([nvcc, "-c", probe, "-o", probe + ".o", *nvcc_flags], f"nvcc header {os.path.relpath(h, ROOT)}")
        cxx = os.environ.get("CXX", "g++")
        cuda_incs = ["-I" + d for d in cuda_include_dirs(nvcc)]
        for f in glue:
            run([cxx, "-fsyntax-only", "-std=c++20", "-Wall", *defines, *incs, *cuda_incs, f],
                f"{cxx} -fsyntax-only {os.path.relpath(f, ROOT)}")
    if spills:
        print("FAIL register spills:\n" + "\n".join(f"  {a} {n}: {b} bytes" for a, n, b in spills), file=sys.stderr)
        return 1
    print(f"check_cuda: {len(cu_files)} .cu, {len(headers)} headers, {len(glue)} .cpp compiled "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
