// Launcher for the per-sample fixed noise kernel (plain CUDA C++, no torch headers).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

// out[b * numel_per_sample + i] = normal i of sample sample_ids[b] under `seed` (layout in philox.cuh).
// `out` and `sample_ids` are device pointers; out is contiguous [batch, numel_per_sample] float32.
// Launch errors are left for the caller to read with cudaGetLastError.
void af_launch_sample_noise(float* out, const int64_t* sample_ids, int64_t batch, int64_t numel_per_sample,
                            uint64_t seed, cudaStream_t stream);
