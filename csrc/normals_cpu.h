// Philox4x32-10 + Box-Muller normals for consecutive counters on the CPU, several counters at a time so the
// compiler vectorises them. Same arithmetic, in the same order, as kernels/philox.cuh and kernels/box_muller.cuh:
// the sample_noise and noising tests compare the bits with the PyTorch twin (ambient_fast/_philox.py).
#pragma once

#include <cstdint>

namespace ambient_fast {

// Writes the 4 * blocks normals of Philox blocks first_block, first_block + 1, ... with
// key (key0, key1) and counter (block low 32, block high 32, c2, c3) to out[0 .. 4 * blocks).
void philox_normals(uint32_t key0, uint32_t key1, uint64_t first_block, uint32_t c2, uint32_t c3, int64_t blocks,
                    float* out);

// Fixed noise of one sample (kernels/philox.cuh af_normal4): blocks of sample `sample_id` from first_block on.
inline void fixed_normals(uint64_t seed, uint64_t sample_id, uint64_t first_block, int64_t blocks, float* out) {
  philox_normals(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), first_block,
                 static_cast<uint32_t>(sample_id), static_cast<uint32_t>(sample_id >> 32), blocks, out);
}

// Fresh noise (kernels/philox.cuh af_fresh_normal4): stream blocks first_counter, first_counter + 1, ...
void fresh_normals(uint64_t seed, uint64_t first_counter, int64_t blocks, float* out);

}  // namespace ambient_fast
