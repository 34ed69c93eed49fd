// Shared macros and bit casts for code compiled both by nvcc (device + host) and by a plain C++ compiler.
// No torch and no CUDA headers here: the CPU build includes this with g++ alone.
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>

#if defined(__CUDACC__)
#define AF_HOST_DEVICE __host__ __device__
#define AF_INLINE __forceinline__
#else
#define AF_HOST_DEVICE
#define AF_INLINE inline
#endif

AF_HOST_DEVICE AF_INLINE float af_bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));  // memcpy: the defined way to reinterpret bits in C++
  return value;
#endif
}

AF_HOST_DEVICE AF_INLINE uint32_t af_float_to_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}
