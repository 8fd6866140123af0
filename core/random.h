// Deterministic randomness. Everything random in ncsrec is a pure function of a seed and a
// position (counter-based), so results do not depend on thread count, order or sharding.
// The hashes and Rng compile for the device too (cuda/ initialises embedding rows with them,
// bit for bit as the CPU does).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "core/host_device.h"

namespace ncsrec {

// splitmix64 finaliser: a bijective, well-mixed hash of 64 bits.
NCSREC_HOST_DEVICE inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
NCSREC_HOST_DEVICE inline uint64_t hash_combine(uint64_t a, uint64_t b) { return mix64(a ^ mix64(b)); }
NCSREC_HOST_DEVICE inline uint64_t hash_combine(uint64_t a, uint64_t b, uint64_t c) { return hash_combine(hash_combine(a, b), c); }
// FNV-1a over the bytes of a string, then mixed.
inline uint64_t hash_string(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ULL;
  return mix64(h);
}
// A uniform double in [0, 1) from 64 random bits.
NCSREC_HOST_DEVICE inline double to_unit(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

// xoshiro256** seeded through splitmix64: a fast sequential generator for one stream.
class Rng {
 public:
  NCSREC_HOST_DEVICE explicit Rng(uint64_t seed) {
    for (auto& s : s_) s = seed = mix64(seed);
  }
  NCSREC_HOST_DEVICE uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
    s_[2] ^= s_[0]; s_[3] ^= s_[1]; s_[1] ^= s_[2]; s_[0] ^= s_[3];
    s_[2] ^= t; s_[3] = rotl(s_[3], 45);
    return result;
  }
  NCSREC_HOST_DEVICE double uniform() { return to_unit(next()); }
  NCSREC_HOST_DEVICE double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform integer in [0, n); n > 0.
  NCSREC_HOST_DEVICE uint64_t below(uint64_t n) { return static_cast<uint64_t>(uniform() * static_cast<double>(n)) % n; }
  NCSREC_HOST_DEVICE double normal() {  // Box-Muller, one value per call (simple and deterministic)
    double u1 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * uniform());
  }
  NCSREC_HOST_DEVICE bool bernoulli(double p) { return uniform() < p; }

 private:
  NCSREC_HOST_DEVICE static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

}  // namespace ncsrec
