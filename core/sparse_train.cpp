// The masked layer's products over the mask's connections only (see sparse_train.h).
//
// The kernels carry target("avx512f") themselves (the rest of the library is built for plain
// x86-64), and run only after masked_sparse_available() said yes. The OpenMP drivers have no
// target attribute: each parallel loop calls an attributed function per tile.
#include "core/sparse_train.h"

// GCC 12's avx512fintrin.h initialises its "undefined" vectors from themselves, which
// -Wmaybe-uninitialized reports at every masked load and reduction that uses one.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "core/blas_core.h"
#include "core/error.h"

namespace ncsrec {

namespace {

constexpr int64_t kTile = 64;          // batch rows per forward / input-gradient tile (4 vectors)
constexpr int kTileVectors = 4;
constexpr int64_t kProductBlock = 128; // inputs per block: the transposed block is 128·64·4 = 32 KiB, in L1
constexpr int64_t kGradTile = 256;     // batch rows per weight-gradient tile (16 vectors)
constexpr int kGradVectors = 16;
constexpr int64_t kGradBlock = 32;     // inputs per weight-gradient block: 32·256·4 = 32 KiB
constexpr int64_t kGradGroups = 8;     // weight gradient: partial sums over at most 8 groups of tiles

int64_t round_up16(int64_t n) { return (n + 15) / 16 * 16; }

// Whether p starts a cache line (null does): where the tiled layout's vector loads need it.
bool on_cache_line(const void* p) { return reinterpret_cast<uintptr_t>(p) % 64 == 0; }

MaskOrientation orient(const BitMask& mask, bool by_output, int64_t block) {
  const int64_t in = mask.rows, out = mask.cols;
  MaskOrientation o;
  o.rows = by_output ? out : in;
  o.cols = by_output ? in : out;
  o.block = block;
  const int64_t blocks = o.blocks();
  o.ptr.assign(static_cast<size_t>(blocks * (o.rows + 1)), 0);
  const int64_t nnz = mask.count();
  NCSREC_CHECK(nnz < (int64_t{1} << 31) && in * out < (int64_t{1} << 31),
               "a masked layer of " << in << " x " << out << " weights is too large for the sparse route");
  o.local.reserve(static_cast<size_t>(nnz));
  o.pos.reserve(static_cast<size_t>(nnz));
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * block, c1 = std::min(o.cols, c0 + block);
    int32_t* p = &o.ptr[static_cast<size_t>(b * (o.rows + 1))];
    p[0] = static_cast<int32_t>(o.pos.size());
    for (int64_t r = 0; r < o.rows; ++r) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t k = by_output ? c : r, j = by_output ? r : c;
        if (!mask.get(k * out + j)) continue;
        o.local.push_back(static_cast<int32_t>(c - c0));
        o.pos.push_back(static_cast<int32_t>(k * out + j));
      }
      p[r + 1] = static_cast<int32_t>(o.pos.size());
    }
  }
  return o;
}

// ---- AVX-512 pieces --------------------------------------------------------------------------

// r[0..15] as the rows of a 16×16 block -> its transpose, in place.
__attribute__((target("avx512f"))) inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 a = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x44), b = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xEE);
    const __m512 c = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x44), d = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xEE);
    t[m] = _mm512_shuffle_f32x4(a, c, 0x88);
    t[m + 4] = _mm512_shuffle_f32x4(a, c, 0xDD);
    t[m + 8] = _mm512_shuffle_f32x4(b, d, 0x88);
    t[m + 12] = _mm512_shuffle_f32x4(b, d, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

__mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u); }

// Rows [b0, b0 + 16·vectors) of a [rows, cols] (rows past the end read as zeros), columns
// [c0, c0 + nc), into at[c − c0][16·v + i] for a tile `width` floats wide. With `gate` (an
// array like a: the layer's ReLU output), an element whose gate is not > 0 reads as 0: the
// pre-activation gradient dy ⊙ (y > 0), made on the way.
__attribute__((target("avx512f"))) void pack_tile(const float* a, const float* gate, int64_t rows, int64_t cols,
                                                  int64_t b0, int vectors, int64_t c0, int64_t nc, float* at,
                                                  int64_t width) {
  const __m512 zero = _mm512_setzero_ps();
  for (int v = 0; v < vectors; ++v) {
    for (int64_t cc = 0; cc < nc; cc += 16) {
      const __mmask16 m = lanes(nc - cc);
      __m512 r[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t row = b0 + 16 * v + i;
        if (row >= rows) {
          r[i] = zero;
          continue;
        }
        const int64_t at_element = row * cols + c0 + cc;
        const __mmask16 live =
            gate ? _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, gate + at_element), zero, _CMP_GT_OQ) : m;
        r[i] = _mm512_maskz_loadu_ps(live, a + at_element);
      }
      transpose16(r);
      const int64_t n = std::min<int64_t>(16, nc - cc);
      for (int64_t q = 0; q < n; ++q) _mm512_storeu_ps(at + (cc + q) * width + 16 * v, r[q]);
    }
  }
}

// A connection as the product kernel reads it: its input's byte offset in the transposed block
// and its weight, side by side (one stream of 8-byte records per output).
struct Connection {
  int32_t offset;
  float value;
};

// One task's part of a forward / input-gradient product: its orientation, its connections
// (with W's values), its operand a (gated by `gate` when not null; or tiled, already gated) and
// its output c (row-major, or tiled and then gated by c_gate when not null).
struct ProductPart {
  const MaskOrientation* o = nullptr;
  const Connection* conn = nullptr;
  const float* a = nullptr;
  const float* gate = nullptr;
  float* c = nullptr;
  bool a_tiled = false, c_tiled = false;
  const float* c_gate = nullptr;
};

// The connections of one block of one part over the transposed block xt: yt[r] (+)= Σ w·xt.
__attribute__((target("avx512f"))) void block_connections(const MaskOrientation& o, const Connection* conn,
                                                          int64_t blk, const float* xt, float* yt) {
  const int64_t R = o.rows;
  const char* xb = reinterpret_cast<const char*>(xt);
  const int32_t* p = &o.ptr[static_cast<size_t>(blk * (R + 1))];
  for (int64_t r = 0; r < R; ++r) {
    int32_t q = p[r];
    const int32_t e = p[r + 1];
    if (q == e && blk > 0) continue;
    __m512 s0[kTileVectors], s1[kTileVectors];
    for (int v = 0; v < kTileVectors; ++v) s0[v] = s1[v] = _mm512_setzero_ps();
    for (; q + 2 <= e; q += 2) {  // two connections at a time: two independent sums per vector
      const __m512 w0 = _mm512_set1_ps(conn[q].value), w1 = _mm512_set1_ps(conn[q + 1].value);
      const float* x0 = reinterpret_cast<const float*>(xb + conn[q].offset);
      const float* x1 = reinterpret_cast<const float*>(xb + conn[q + 1].offset);
      for (int v = 0; v < kTileVectors; ++v) s0[v] = _mm512_fmadd_ps(w0, _mm512_load_ps(x0 + 16 * v), s0[v]);
      for (int v = 0; v < kTileVectors; ++v) s1[v] = _mm512_fmadd_ps(w1, _mm512_load_ps(x1 + 16 * v), s1[v]);
    }
    if (q < e) {
      const __m512 w0 = _mm512_set1_ps(conn[q].value);
      const float* x0 = reinterpret_cast<const float*>(xb + conn[q].offset);
      for (int v = 0; v < kTileVectors; ++v) s0[v] = _mm512_fmadd_ps(w0, _mm512_load_ps(x0 + 16 * v), s0[v]);
    }
    float* out = yt + r * kTile;
    for (int v = 0; v < kTileVectors; ++v) {
      __m512 s = _mm512_add_ps(s0[v], s1[v]);
      if (blk > 0) s = _mm512_add_ps(_mm512_load_ps(out + 16 * v), s);
      _mm512_store_ps(out + 16 * v, s);
    }
  }
}

// yt [R, 64] of `count` parts (yt_stride floats apart), summed in part order, back to c[b, R]
// in 16×16 blocks, with the bias and ReLU.
__attribute__((target("avx512f"))) void store_tile(const float* yt, int64_t yt_stride, int count, int64_t R,
                                                   int64_t B, int64_t b0, const float* bias, bool relu, float* c) {
  const __m512 zero = _mm512_setzero_ps();
  for (int v = 0; v < kTileVectors && b0 + 16 * v < B; ++v) {
    for (int64_t j0 = 0; j0 < R; j0 += 16) {
      const __mmask16 m = lanes(R - j0);
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(yt + (j0 + i) * kTile + 16 * v);
      for (int part = 1; part < count; ++part)
        for (int i = 0; i < 16; ++i)
          r[i] = _mm512_add_ps(r[i], _mm512_load_ps(yt + part * yt_stride + (j0 + i) * kTile + 16 * v));
      transpose16(r);
      const __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + j0) : zero;
      for (int i = 0; i < 16; ++i) {
        const int64_t row = b0 + 16 * v + i;
        if (row >= B) break;
        __m512 y = bias ? _mm512_add_ps(r[i], b) : r[i];
        if (relu) y = _mm512_max_ps(y, zero);
        _mm512_mask_storeu_ps(c + row * R + j0, m, y);
      }
    }
  }
}

// The same for a tiled c: yt [R, 64] of `count` parts summed in part order, with the bias and
// ReLU, then ⊙ (gate > 0) when `gate` (tiled like c) is not null, to c's tile at row b0 as it
// is (no transposition); rows past B are written as zeros.
__attribute__((target("avx512f"))) void store_tiled(const float* yt, int64_t yt_stride, int count, int64_t R,
                                                    int64_t B, int64_t b0, const float* bias, bool relu,
                                                    const float* gate, float* c) {
  const __m512 zero = _mm512_setzero_ps();
  const int64_t offset = b0 / kTile * R * kTile;
  __mmask16 live[kTileVectors];
  for (int v = 0; v < kTileVectors; ++v) live[v] = lanes(std::max<int64_t>(0, B - b0 - 16 * v));
  for (int64_t r = 0; r < R; ++r) {
    const __m512 b = bias ? _mm512_set1_ps(bias[r]) : zero;
    for (int v = 0; v < kTileVectors; ++v) {
      __m512 y = _mm512_load_ps(yt + r * kTile + 16 * v);
      for (int part = 1; part < count; ++part) y = _mm512_add_ps(y, _mm512_load_ps(yt + part * yt_stride + r * kTile + 16 * v));
      if (bias) y = _mm512_add_ps(y, b);
      if (relu) y = _mm512_max_ps(y, zero);
      __mmask16 keep = live[v];
      if (gate) keep = _mm512_mask_cmp_ps_mask(keep, _mm512_load_ps(gate + offset + r * kTile + 16 * v), zero, _CMP_GT_OQ);
      _mm512_store_ps(c + offset + r * kTile + 16 * v, _mm512_maskz_mov_ps(keep, y));
    }
  }
}

// One tile of rows [b0, b0 + 64) of every part: each part's connections over its operand's
// transposed blocks into its own yt (a row-major operand's block transposed once for
// consecutive parts with the same operand; a tiled operand's block read where it is); then each
// part's yt to its c, or with `sum`, the parts' yt added in order to the first part's c.
// xt holds kProductBlock·kTile floats; yt `parts` arrays of yt_stride floats.
__attribute__((target("avx512f"))) void product_tile(const std::vector<ProductPart>& parts, bool sum, int64_t B,
                                                     const float* bias, bool relu, int64_t b0, float* xt, float* yt,
                                                     int64_t yt_stride) {
  const MaskOrientation& o = *parts[0].o;
  const int count = static_cast<int>(parts.size());
  for (int64_t blk = 0; blk < o.blocks(); ++blk) {
    const int64_t c0 = blk * o.block, nc = std::min(o.block, o.cols - c0);
    const ProductPart* packed = nullptr;  // the part whose operand xt holds for this block
    for (int i = 0; i < count; ++i) {
      const ProductPart& part = parts[static_cast<size_t>(i)];
      const float* block = xt;
      if (part.a_tiled) {
        block = part.a + (b0 / kTile * o.cols + c0) * kTile;
      } else if (!packed || part.a != packed->a || part.gate != packed->gate) {
        pack_tile(part.a, part.gate, B, o.cols, b0, kTileVectors, c0, nc, xt, kTile);
        packed = &part;
      }
      block_connections(*part.o, part.conn, blk, block, yt + i * yt_stride);
    }
  }
  auto store = [&](const ProductPart& part, const float* y, int parts_summed) {
    if (part.c_tiled)
      store_tiled(y, yt_stride, parts_summed, o.rows, B, b0, bias, relu, part.c_gate, part.c);
    else
      store_tile(y, yt_stride, parts_summed, o.rows, B, b0, bias, relu, part.c);
  };
  if (sum) {
    store(parts[0], yt, count);
    return;
  }
  for (int i = 0; i < count; ++i) store(parts[static_cast<size_t>(i)], yt + i * yt_stride, 1);
}

// The sums of 16 vectors' lanes: lane i of the result is the sum of v[i]'s 16 lanes (a tree of
// unpacks, shuffles and adds: about three instructions per vector, where a reduction of each
// vector alone takes eight).
__attribute__((target("avx512f"))) inline __m512 lane_sums16(const __m512 v[16]) {
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [v2i, v2i+1, v2i, v2i+1] partial sums
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: [v4i .. v4i+3] partial sums
    const __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
    b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  for (int i = 0; i < 2; ++i)  // 128-bit lanes: [b2i.L0+L1, b2i.L2+L3, b2i+1.L0+L1, b2i+1.L2+L3]
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
}

// A weight-gradient operand over one tile of 256 rows: the element of feature k and row
// 64·i + s (i < 4, s < 64) at p[k·feature + i·chunk + s]. A transposed tile [n, 256] has
// feature 256 and chunk 64; a tiled array's four tiles have feature 64 and chunk n·64.
struct GradOperand {
  const float* p;
  int64_t feature, chunk;
  const float* vector(int64_t k, int v) const { return p + k * feature + (v / 4) * chunk + 16 * (v % 4); }
};

// The weight gradient's connections for one tile: acc[q] += the tile's dot product of x column
// k and dy column j. Each connection's 16 partial sums wait in `pending` until 16 consecutive
// connections have theirs, which are then reduced together and added to acc[q0 .. q0+16) in
// one vector.
__attribute__((target("avx512f"))) void grad_tile(const MaskOrientation& o, const GradOperand& x,
                                                  const GradOperand& dy, float* acc) {
  const int64_t R = o.rows;
  __m512 pending[16];
  int waiting = 0;
  int64_t q0 = 0;  // the first pending connection
  for (int64_t blk = 0; blk < o.blocks(); ++blk) {
    const int32_t* p = &o.ptr[static_cast<size_t>(blk * (R + 1))];
    const float* xblock = x.p + blk * o.block * x.feature;
    for (int64_t j = 0; j < R; ++j) {
      int32_t q = p[j];
      const int32_t e = p[j + 1];
      if (q == e) continue;
      __m512 d[kGradVectors];
      for (int v = 0; v < kGradVectors; ++v) d[v] = _mm512_load_ps(dy.vector(j, v));
      for (; q < e; ++q) {
        const float* xr = xblock + o.local[static_cast<size_t>(q)] * x.feature;
        __m512 s0 = _mm512_mul_ps(d[0], _mm512_load_ps(xr)), s1 = _mm512_mul_ps(d[1], _mm512_load_ps(xr + 16));
        __m512 s2 = _mm512_mul_ps(d[2], _mm512_load_ps(xr + 32)), s3 = _mm512_mul_ps(d[3], _mm512_load_ps(xr + 48));
        for (int v = 4; v < kGradVectors; v += 4) {  // rows 16·v ..: the next 64 rows, x.chunk further
          xr += x.chunk;
          s0 = _mm512_fmadd_ps(d[v], _mm512_load_ps(xr), s0);
          s1 = _mm512_fmadd_ps(d[v + 1], _mm512_load_ps(xr + 16), s1);
          s2 = _mm512_fmadd_ps(d[v + 2], _mm512_load_ps(xr + 32), s2);
          s3 = _mm512_fmadd_ps(d[v + 3], _mm512_load_ps(xr + 48), s3);
        }
        pending[waiting++] = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
        if (waiting == 16) {
          _mm512_storeu_ps(acc + q0, _mm512_add_ps(_mm512_loadu_ps(acc + q0), lane_sums16(pending)));
          q0 += 16;
          waiting = 0;
        }
      }
    }
  }
  if (waiting == 0) return;
  for (int i = waiting; i < 16; ++i) pending[i] = _mm512_setzero_ps();
  const __mmask16 m = lanes(waiting);
  _mm512_mask_storeu_ps(acc + q0, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, acc + q0), lane_sums16(pending)));
}

// n floats of `buffer` starting at a 64-byte boundary: a vector load of a transposed tile row
// must not straddle two cache lines (that halves the kernels' speed). New elements are zeros.
float* aligned64(std::vector<float>& buffer, size_t n) {
  if (buffer.size() < n + 16) buffer.assign(n + 16, 0.0f);
  const uintptr_t address = reinterpret_cast<uintptr_t>(buffer.data());
  return buffer.data() + ((64 - address % 64) % 64) / sizeof(float);
}

// sums[j] += Σ of feature j over a gradient tile's 256 rows (the bias gradient).
__attribute__((target("avx512f"))) void row_sums(const GradOperand& dy, int64_t out, float* sums) {
  for (int64_t j = 0; j < out; ++j) {
    __m512 s0 = _mm512_load_ps(dy.vector(j, 0)), s1 = _mm512_load_ps(dy.vector(j, 1));
    for (int v = 2; v < kGradVectors; v += 2) {
      s0 = _mm512_add_ps(s0, _mm512_load_ps(dy.vector(j, v)));
      s1 = _mm512_add_ps(s1, _mm512_load_ps(dy.vector(j, v + 1)));
    }
    sums[j] += _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  }
}

// A thread's scratch, kept across calls (OpenMP's threads persist), 64-byte aligned.
float* scratch(int which, size_t n) {
  thread_local std::vector<float> buffers[2];
  return aligned64(buffers[which], n);
}

// The forward / input-gradient product of several tasks of one layer (`orient` picks the
// orientation of each task's plan). With `sum`, the parts' products are added, in part order,
// into the first part's c.
template <class Orient>
void product(std::vector<ProductPart> parts, Orient orient, const std::vector<MaskedSparseTask>& tasks, int64_t B,
             const float* w, const float* bias, bool relu, bool sum) {
  NCSREC_CHECK(masked_sparse_available(), "the sparse route needs AVX-512F");
  NCSREC_CHECK(!parts.empty(), "a sparse product of no tasks");
  // The connections with W's current values (W moves every step; the plan holds positions).
  thread_local std::vector<Connection> connections;
  int64_t total = 0;
  for (const MaskedSparseTask& t : tasks) total += orient(*t.plan).nnz();
  connections.resize(static_cast<size_t>(total));
  Connection* conn = connections.data();  // the calling thread's: the loop's threads see this pointer
  constexpr int32_t kStride = static_cast<int32_t>(kTile * sizeof(float));  // bytes per transposed input
  for (size_t i = 0; i < parts.size(); ++i) {
    const MaskOrientation& o = orient(*tasks[i].plan);
    parts[i].o = &o;
    NCSREC_CHECK(o.rows == parts[0].o->rows && o.cols == parts[0].o->cols && o.block == parts[0].o->block,
                 "a sparse product of tasks with different shapes");
    parts[i].conn = conn;
    for (int64_t q = 0; q < o.nnz(); ++q)
      conn[q] = {o.local[static_cast<size_t>(q)] * kStride, w[o.pos[static_cast<size_t>(q)]]};
    conn += o.nnz();
  }
  const int64_t R = parts[0].o->rows;
  for (const ProductPart& part : parts) {
    NCSREC_CHECK(part.a && part.c, "a sparse product's operand or output is null");
    NCSREC_CHECK(!part.a_tiled || !part.gate,
                 "a tiled dy takes no relu_y: it must have been written gated already (dx_gate of the layer above)");
    NCSREC_CHECK(part.c_tiled || !part.c_gate, "a sparse product's output gate (dx_gate) needs a tiled output");
    NCSREC_CHECK(!part.a_tiled || on_cache_line(part.a), "a tiled operand of a sparse product must start on a 64-byte boundary");
    NCSREC_CHECK(!part.c_tiled || on_cache_line(part.c), "a tiled output of a sparse product must start on a 64-byte boundary");
    NCSREC_CHECK(on_cache_line(part.c_gate), "a tiled output's gate (dx_gate) must start on a 64-byte boundary");
  }
  const int64_t tiles = (B + kTile - 1) / kTile;
  const int64_t yt_stride = round_up16(R) * kTile;
  const size_t yt_size = static_cast<size_t>(yt_stride) * parts.size();
#pragma omp parallel for schedule(static) if (tiles > 1)
  for (int64_t t = 0; t < tiles; ++t) {
    float* xt = scratch(0, static_cast<size_t>(kProductBlock * kTile));
    float* yt = scratch(1, yt_size);
    product_tile(parts, sum, B, bias, relu, t * kTile, xt, yt, yt_stride);
  }
  // A tiled output's tiles past the batch's, up to its whole count, are zeros.
  const int64_t end = masked_tiled_floats(B, R);
  for (size_t i = 0; i < (sum ? 1 : parts.size()); ++i)
    if (parts[i].c_tiled) std::fill(parts[i].c + tiles * R * kTile, parts[i].c + end, 0.0f);
}

}  // namespace

MaskedSparsePlan plan_masked_sparse(const BitMask& mask) {
  MaskedSparsePlan plan;
  plan.in = mask.rows;
  plan.out = mask.cols;
  plan.by_output = orient(mask, true, kProductBlock);
  plan.by_input = orient(mask, false, kProductBlock);
  plan.for_grad = orient(mask, true, kGradBlock);
  return plan;
}

bool masked_sparse_available() { return cpu_has_avx512f(); }

int64_t masked_tiled_rows(int64_t rows) { return (rows + kMaskedTiledRows - 1) / kMaskedTiledRows * kMaskedTiledRows; }

int64_t masked_tiled_floats(int64_t rows, int64_t n) { return masked_tiled_rows(rows) * n; }

void to_masked_tiled(const float* a, int64_t rows, int64_t n, float* tiled) {
  for (int64_t r = 0; r < masked_tiled_rows(rows); ++r)
    for (int64_t k = 0; k < n; ++k)
      tiled[(r / kTile * n + k) * kTile + r % kTile] = r < rows ? a[r * n + k] : 0.0f;
}

void from_masked_tiled(const float* tiled, int64_t rows, int64_t n, float* a) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < n; ++k) a[r * n + k] = tiled[(r / kTile * n + k) * kTile + r % kTile];
}

void masked_sparse_forward(const std::vector<MaskedSparseTask>& tasks, int64_t rows, const float* w,
                           const float* bias, bool relu) {
  std::vector<ProductPart> parts(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    parts[i].a = tasks[i].x;
    parts[i].a_tiled = tasks[i].x_tiled;
    parts[i].c = tasks[i].y;
    parts[i].c_tiled = tasks[i].y_tiled;
  }
  product(parts, [](const MaskedSparsePlan& p) -> const MaskOrientation& { return p.by_output; }, tasks, rows, w,
          bias, relu, false);
}

void masked_sparse_input_grad(const std::vector<MaskedSparseTask>& tasks, int64_t rows, const float* w,
                              float* dx_sum) {
  std::vector<ProductPart> parts(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    const MaskedSparseTask& t = tasks[i];
    NCSREC_CHECK(!dx_sum || (!t.dx_tiled && !t.dx_gate), "a summed sparse input gradient is row-major and ungated");
    parts[i].a = t.dy;
    parts[i].gate = t.relu_y;
    parts[i].a_tiled = t.dy_tiled;
    parts[i].c = dx_sum ? dx_sum : t.dx;
    parts[i].c_tiled = t.dx_tiled;
    parts[i].c_gate = t.dx_gate;
  }
  product(parts, [](const MaskedSparsePlan& p) -> const MaskOrientation& { return p.by_input; }, tasks, rows, w,
          nullptr, false, dx_sum != nullptr);
}

void masked_sparse_weight_grad(const std::vector<MaskedSparseTask>& tasks, int64_t rows, float* dw, float* db) {
  NCSREC_CHECK(masked_sparse_available(), "the sparse route needs AVX-512F");
  NCSREC_CHECK(!tasks.empty(), "a sparse weight gradient of no tasks");
  const int64_t in = tasks[0].plan->in, out = tasks[0].plan->out;
  // Each task's partial sums: its connections, then the bias (widths[i] floats at offsets[i]).
  std::vector<int64_t> offsets, widths;
  int64_t total = 0;
  int64_t work = 0;
  for (const MaskedSparseTask& t : tasks) {
    NCSREC_CHECK(t.plan->in == in && t.plan->out == out, "a sparse weight gradient of tasks with different shapes");
    NCSREC_CHECK(t.x && t.dy, "a sparse weight gradient's x or dy is null");
    NCSREC_CHECK(!t.dy_tiled || !t.relu_y,
                 "a tiled dy takes no relu_y: it must have been written gated already (dx_gate of the layer above)");
    NCSREC_CHECK((!t.x_tiled || on_cache_line(t.x)) && (!t.dy_tiled || on_cache_line(t.dy)),
                 "a tiled operand of a sparse weight gradient must start on a 64-byte boundary");
    offsets.push_back(total);
    widths.push_back(t.plan->for_grad.nnz() + (db ? out : 0));
    total += widths.back();
    work += rows * t.plan->nnz();
  }
  if (rows == 0) return;  // no rows: nothing to add (and no group of partial sums to add it from)
  // The batch's tiles in a fixed number of consecutive groups (by the rows alone, never the
  // threads), each summed into its own partial arrays by one thread with no barrier; the
  // partials are then added in group order, task by task. The sums are the same on any thread
  // count, and the same as one call per task.
  const int64_t tiles = (rows + kGradTile - 1) / kGradTile, groups = std::min(kGradGroups, tiles);
  thread_local std::vector<float> partials;  // the calling thread's: the loops use the pointer
  if (partials.size() < static_cast<size_t>(groups * total)) partials.resize(static_cast<size_t>(groups * total));
  float* acc = partials.data();
  const size_t xt_size = static_cast<size_t>(round_up16(in) * kGradTile),
               dt_size = static_cast<size_t>(round_up16(out) * kGradTile);
  const int count = static_cast<int>(tasks.size());
  static_assert(kTile == kMaskedTileRows && kGradTile == kMaskedTiledRows && kGradTile == 4 * kTile,
                "the tiled layout's tiles are the products' tiles, four to a gradient tile");
#pragma omp parallel for schedule(static) if (groups > 1 && work >= (int64_t{1} << 20))
  for (int64_t g = 0; g < groups; ++g) {
    float* xt = scratch(0, xt_size);
    float* dt = scratch(1, dt_size);
    std::fill_n(acc + g * total, total, 0.0f);  // zeroed by the thread that sums into it
    for (int64_t t = tiles * g / groups; t < tiles * (g + 1) / groups; ++t) {
      const float* packed_x = nullptr;  // the row-major x that xt holds for this tile
      for (int i = 0; i < count; ++i) {
        const MaskedSparseTask& task = tasks[static_cast<size_t>(i)];
        GradOperand x{xt, kGradTile, kTile}, dy{dt, kGradTile, kTile};
        if (task.x_tiled) {
          x = {task.x + t * kGradTile * in, kTile, in * kTile};
        } else if (task.x != packed_x) {  // one transposition of a shared input
          pack_tile(task.x, nullptr, rows, in, t * kGradTile, kGradVectors, 0, in, xt, kGradTile);
          packed_x = task.x;
        }
        if (task.dy_tiled)
          dy = {task.dy + t * kGradTile * out, kTile, out * kTile};
        else
          pack_tile(task.dy, task.relu_y, rows, out, t * kGradTile, kGradVectors, 0, out, dt, kGradTile);
        float* a = acc + g * total + offsets[static_cast<size_t>(i)];
        grad_tile(task.plan->for_grad, x, dy, a);
        if (db) row_sums(dy, out, a + task.plan->for_grad.nnz());
      }
    }
  }
  for (int i = 0; i < count; ++i) {
    const MaskOrientation& o = tasks[static_cast<size_t>(i)].plan->for_grad;
    const int64_t nnz = o.nnz(), width = widths[static_cast<size_t>(i)];
    const float* a = acc + offsets[static_cast<size_t>(i)];
#pragma omp parallel for schedule(static) if (nnz >= (int64_t{1} << 16))
    for (int64_t q = 0; q < width; ++q) {
      float sum = a[q];
      for (int64_t g = 1; g < groups; ++g) sum += a[g * total + q];
      if (q < nnz)
        dw[o.pos[static_cast<size_t>(q)]] += sum;
      else
        db[q - nnz] += sum;
    }
  }
}

void masked_sparse_forward(const MaskedSparsePlan& plan, int64_t rows, const float* x, const float* w,
                           const float* bias, bool relu, float* y) {
  masked_sparse_forward({{&plan, x, nullptr, nullptr, y}}, rows, w, bias, relu);
}

void masked_sparse_input_grad(const MaskedSparsePlan& plan, int64_t rows, const float* dy, const float* relu_y,
                              const float* w, float* dx) {
  masked_sparse_input_grad({{&plan, nullptr, dy, relu_y, nullptr, dx}}, rows, w, nullptr);
}

void masked_sparse_weight_grad(const MaskedSparsePlan& plan, int64_t rows, const float* x, const float* dy,
                               const float* relu_y, float* dw, float* db) {
  masked_sparse_weight_grad({{&plan, x, dy, relu_y}}, rows, dw, db);
}

}  // namespace ncsrec
