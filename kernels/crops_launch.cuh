// Launcher for the noisy-crops kernel (plain CUDA C++, no torch headers); the math is in crops.cuh.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "crops.cuh"

// Device pointers: images contiguous [B, C, H, W] float32; sample_ids [B]; sigmas float32 and level_keys int64,
// both [B, S]; out contiguous [B, S, T, P, C, k, k]. Launch errors are left for the caller (cudaGetLastError).
void af_launch_noisy_crops(const AfCropsShape& shape, const float* images, const int64_t* sample_ids,
                           const float* sigmas, const int64_t* level_keys, uint64_t seed, float* out,
                           cudaStream_t stream);
