// Counter-based standard normal noise: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3", SC 2011) + portable Box-Muller (box_muller.cuh). Host+device inline, no torch headers.
//
// Noise layout (DESIGN.md section 1: noise fixed per sample, keyed by a stable sample id, never by batch
// position): element i of sample `sample_id` is normal (i % 4) of Philox block i / 4 with
//   key     = (seed low 32, seed high 32)
//   counter = (block low 32, block high 32, sample_id low 32, sample_id high 32)
// and normals (z0, z1) = BoxMuller(x0, x1), (z2, z3) = BoxMuller(x2, x3) of the 4 output words.
// ambient_fast/_philox.py is the bit-identical PyTorch twin.
//
// Fresh noise eps (x_t = x_tn + std * eps, a new draw every step) on the C++ CPU op and the PyTorch twin: element j
// of batch row r is normal (j % 4) of Philox block g = offset + r * ceil(N / 4) + j / 4 with
//   key     = (seed low 32 ^ 0x46525348 ("FRSH"), seed high 32)
//   counter = (g low 32, g high 32, 0, 0)
// The "FRSH" constant keeps this stream apart from the fixed noise of the same seed (which would otherwise be
// the noise of sample id 0).
#pragma once

#include "af_common.cuh"
#include "box_muller.cuh"

namespace af_philox {
constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kRounds = 10;
constexpr uint32_t kFreshDomainKey = 0x46525348u;  // "FRSH"
}  // namespace af_philox

AF_HOST_DEVICE AF_INLINE uint32_t af_mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
#endif
}

// Philox4x32-10 in place: ctr[4] -> 4 random words.
AF_HOST_DEVICE AF_INLINE void af_philox4x32_10(uint32_t ctr[4], uint32_t key0, uint32_t key1) {
  for (int round = 0; round < af_philox::kRounds; ++round) {
    if (round > 0) {  // key schedule: Weyl sequence, bumped before every round but the first
      key0 += af_philox::kWeyl0;
      key1 += af_philox::kWeyl1;
    }
    uint32_t hi0, hi1;
    const uint32_t lo0 = af_mulhilo32(af_philox::kMul0, ctr[0], &hi0);
    const uint32_t lo1 = af_mulhilo32(af_philox::kMul1, ctr[2], &hi1);
    const uint32_t next0 = hi1 ^ ctr[1] ^ key0;
    const uint32_t next2 = hi0 ^ ctr[3] ^ key1;
    ctr[0] = next0;
    ctr[1] = lo1;
    ctr[2] = next2;
    ctr[3] = lo0;
  }
}

// The 4 normals of block `block` (elements 4*block .. 4*block+3) of sample `sample_id`.
AF_HOST_DEVICE AF_INLINE void af_normal4(uint64_t seed, uint64_t sample_id, uint64_t block, float z[4]) {
  uint32_t words[4] = {static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                       static_cast<uint32_t>(sample_id), static_cast<uint32_t>(sample_id >> 32)};
  af_philox4x32_10(words, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  af_box_muller(words[0], words[1], &z[0], &z[1]);
  af_box_muller(words[2], words[3], &z[2], &z[3]);
}

// The 4 fresh normals of Philox block `counter` (elements 4*counter .. 4*counter+3 of the flattened stream).
AF_HOST_DEVICE AF_INLINE void af_fresh_normal4(uint64_t seed, uint64_t counter, float z[4]) {
  uint32_t words[4] = {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u};
  af_philox4x32_10(words, static_cast<uint32_t>(seed) ^ af_philox::kFreshDomainKey, static_cast<uint32_t>(seed >> 32));
  af_box_muller(words[0], words[1], &z[0], &z[1]);
  af_box_muller(words[2], words[3], &z[2], &z[3]);
}
