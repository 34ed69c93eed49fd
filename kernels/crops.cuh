// Batched crop extraction + noising across a grid of levels, for classifier scoring (DESIGN.md section 2).
// Host+device inline index and RNG math shared by csrc/crops_cpu.cpp and kernels/crops.cu; no torch headers.
//
// Output layout: out[b, s, t, p, c, i, j] (contiguous, float32) =
//     images[b, c, top(p) + i, left(p) + j] + sigmas[b, s] * z
// for sample b, level s, draw t, crop p = row * crops_w + col (top = row * stride, left = col * stride), channel c
// and crop pixel (i, j). crops_h = (H - k) / stride + 1 (floor: a remainder narrower than one stride is dropped,
// as torch.Tensor.unfold does). The full-image form is k = H = W (one crop).
//
// RNG keying (so a score never depends on batch composition, chunking, rank or device): the normals of one crop
// are its C*k*k elements in (c, i, j) order; element e is normal e % 4 of Philox4x32-10 with
//   key     = (seed low 32 ^ 0x43524F50 ("CROP"), seed high 32 ^ sample_id high 32)
//   counter = (e / 4, p, level_keys[b, s] * T + t, sample_id low 32)
// and (z0, z1) = BoxMuller(x0, x1), (z2, z3) = BoxMuller(x2, x3), exactly as sample_noise (philox.cuh).
// The "CROP" constant keeps these streams apart from sample_noise's for the same seed. level_keys is chosen by
// the caller: the grid index (independent noise per level) or 0 for every level (common random numbers: the same
// z for a (sample, draw, crop) at every level, which makes the estimated p(s) a smooth function of s).
// ambient_fast/annotate/noisy_crops.py holds the bit-identical PyTorch reference.
#pragma once

#include "af_common.cuh"
#include "box_muller.cuh"
#include "philox.cuh"

namespace af_crops {
constexpr uint32_t kDomainKey = 0x43524F50u;  // "CROP"
}  // namespace af_crops

// Number of crop positions along one axis of length `size` (0 when the crop does not fit).
AF_HOST_DEVICE AF_INLINE int64_t af_crops_along(int64_t size, int64_t crop, int64_t stride) {
  return size < crop ? 0 : (size - crop) / stride + 1;
}

// The 4 normals of Philox block `block` (elements 4*block .. 4*block+3) of one noisy crop.
AF_HOST_DEVICE AF_INLINE void af_crop_normal4(uint64_t seed, uint64_t sample_id, uint32_t stream, uint32_t crop,
                                              uint32_t block, float z[4]) {
  uint32_t words[4] = {block, crop, stream, static_cast<uint32_t>(sample_id)};
  af_philox4x32_10(words, static_cast<uint32_t>(seed) ^ af_crops::kDomainKey,
                   static_cast<uint32_t>(seed >> 32) ^ static_cast<uint32_t>(sample_id >> 32));
  af_box_muller(words[0], words[1], &z[0], &z[1]);
  af_box_muller(words[2], words[3], &z[2], &z[3]);
}

// Problem shape, passed by value to the kernels.
struct AfCropsShape {
  int64_t batch, channels, height, width;  // images [B, C, H, W]
  int64_t levels, draws;                   // S, T
  int64_t crop, stride;                    // k, tiling stride
  int64_t crops_w, crops_per_image;        // crops along W, P = crops_h * crops_w
  int64_t crop_numel;                      // C * k * k
  int64_t blocks_per_crop;                 // ceil(crop_numel / 4)
  int64_t total_blocks;                    // B * S * T * P * blocks_per_crop
};

// One Philox block of the output: which (sample, level, draw, crop) it belongs to and where it starts.
struct AfCropsBlock {
  int64_t sample, level, draw, crop, block;
};

AF_HOST_DEVICE AF_INLINE AfCropsBlock af_crops_decompose(const AfCropsShape& shape, int64_t task) {
  AfCropsBlock where;
  where.block = task % shape.blocks_per_crop;
  int64_t rest = task / shape.blocks_per_crop;
  where.crop = rest % shape.crops_per_image;
  rest /= shape.crops_per_image;
  where.draw = rest % shape.draws;
  rest /= shape.draws;
  where.level = rest % shape.levels;
  where.sample = rest / shape.levels;
  return where;
}

// Offset in images[B, C, H, W] (contiguous) of element `element` (c, i, j order) of crop `crop` of `sample`.
AF_HOST_DEVICE AF_INLINE int64_t af_crops_source_offset(const AfCropsShape& shape, int64_t sample, int64_t crop,
                                                        int64_t element) {
  const int64_t k2 = shape.crop * shape.crop;
  const int64_t channel = element / k2;
  const int64_t pixel = element - channel * k2;
  const int64_t i = pixel / shape.crop;
  const int64_t j = pixel - i * shape.crop;
  const int64_t crop_row = crop / shape.crops_w;
  const int64_t crop_col = crop - crop_row * shape.crops_w;
  const int64_t y = crop_row * shape.stride + i;
  const int64_t x = crop_col * shape.stride + j;
  return ((sample * shape.channels + channel) * shape.height + y) * shape.width + x;
}

// Writes the (up to) 4 output elements of Philox block `task`: out = image + sigma * z (two roundings, no FMA).
AF_HOST_DEVICE AF_INLINE void af_crops_write_block(const AfCropsShape& shape, int64_t task, const float* images,
                                                   const int64_t* sample_ids, const float* sigmas,
                                                   const int64_t* level_keys, uint64_t seed, float* out) {
  const AfCropsBlock where = af_crops_decompose(shape, task);
  const int64_t level_row = where.sample * shape.levels + where.level;
  const uint32_t stream = static_cast<uint32_t>(level_keys[level_row] * shape.draws + where.draw);
  float z[4];
  af_crop_normal4(seed, static_cast<uint64_t>(sample_ids[where.sample]), stream, static_cast<uint32_t>(where.crop),
                  static_cast<uint32_t>(where.block), z);
  const float sigma = sigmas[level_row];
  const int64_t first = where.block * 4;
  const int64_t valid = shape.crop_numel - first < 4 ? shape.crop_numel - first : 4;
  // task / blocks_per_crop numbers the output crop; its elements are contiguous.
  float* dst = out + (task / shape.blocks_per_crop) * shape.crop_numel + first;
  for (int64_t r = 0; r < valid; ++r) {
    const float noise = sigma * z[r];
    dst[r] = images[af_crops_source_offset(shape, where.sample, where.crop, first + r)] + noise;
  }
}
