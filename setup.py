"""Build of fastbayes and its compiled extension fastbayes._C (metadata lives in pyproject.toml).

CPU-only torch: a CppExtension from csrc/bind.cpp + csrc/cpu/*.cpp (-O3 -fopenmp).  CUDA torch with a
CUDA toolkit (CUDA_HOME found): a CUDAExtension that also compiles csrc/cuda/*.cu and csrc/cuda/*.cpp and
defines FASTBAYES_WITH_CUDA.  FASTBAYES_BUILD_CUDA=0 forces the CPU build.  Build with
`pip install --no-build-isolation -e .` so the venv's torch is the one compiled against.
"""
import glob
import os

from setuptools import find_packages, setup

os.environ.setdefault("MAX_JOBS", "2")  # each translation unit takes ~1 GB and ~10-20 s; 2-core machines

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _rel(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _with_cuda():
    if os.environ.get("FASTBAYES_BUILD_CUDA", "1") == "0":
        return False
    return bool(torch.version.cuda) and CUDA_HOME is not None


def _extension():
    sources = ["csrc/bind.cpp", "csrc/autograd.cpp", *_rel("csrc/cpu/*.cpp")]
    # -g0 last: it cancels the -g that Python's CFLAGS put in front (debug info doubles the compile time)
    cxx = ["-O3", "-fopenmp", "-g0"]
    kwargs = dict(include_dirs=[os.path.join(HERE, "csrc", "include")], extra_link_args=["-fopenmp"])
    if _with_cuda():
        sources += _rel("csrc/cuda/*.cu") + _rel("csrc/cuda/*.cpp")
        defines = ["-DFASTBAYES_WITH_CUDA"]
        return CUDAExtension("fastbayes._C", sources,
                             extra_compile_args={"cxx": cxx + defines,
                                                 "nvcc": ["-O3", "--expt-relaxed-constexpr"] + defines},
                             **kwargs)
    return CppExtension("fastbayes._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    packages=find_packages(include=["fastbayes", "fastbayes.*"]) + ["fastbayes.kernels"],
    package_dir={"fastbayes.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
)
