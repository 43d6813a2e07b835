// Compilation-target macros shared by every fastbayes header.  Torch-free: these headers are included by
// plain .cu files compiled with nvcc as well as by the ATen-based CPU ops.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FB_HOST_DEVICE __host__ __device__
#define FB_UNROLL _Pragma("unroll")
// for the big float64 helpers called many times per kernel: a call is cheap next to their erfc/log, and
// inlining every call site triples nvcc's time and the size of the object
#define FB_DEVICE_NOINLINE __noinline__
#else
#define FB_HOST_DEVICE
#define FB_UNROLL
#define FB_DEVICE_NOINLINE
#endif

#define FB_INLINE FB_HOST_DEVICE inline
