// The Python module fastbayes._C.  Importing it loads the shared library, whose static initializers
// register the ops (schemas in cpu/gate_stats.cpp, kernels in cpu/ and cuda/) under torch.ops.fastbayes_C.
// Only two build-info helpers cross pybind, so this file includes neither torch/extension.h nor
// torch/library.h (each costs ~10 s of compile time on the 2-core machines).
#include <omp.h>
#include <pybind11/pybind11.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastbayes compiled ops (registered under torch.ops.fastbayes_C)";
  m.def("has_cuda", []() {
#ifdef FASTBAYES_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the CUDA kernels were compiled into this build.");
  m.def("omp_max_threads", []() { return omp_get_max_threads(); },
        "omp_get_max_threads() of the OpenMP runtime the CPU ops run on.");
}
