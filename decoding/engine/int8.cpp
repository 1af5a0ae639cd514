// The product of the embedded engine's int8 weights (weights.py, Int8Matrix), built on first use (kernels.py).
//
// y[t, n] = float(sum_k q[t, k] * w[n, k]) * (scale[n] * row_scale[t]), where w is int8 with one scale per output
// row, and each input row is rounded to integers of at most L in magnitude (`levels`; weights.py takes the most
// whose sums cannot overflow 32 bits: 26,406 for K = 640, 8,256 for K = 2,048): q = round(x[t] * L / max|x[t]|),
// row_scale[t] = max|x[t]| / L. Inputs keep 14 to 16 bits, so the weights' rounding is nearly all the format
// loses. The sums are integers, exact in any order, and each row is rounded on its own: a row's result never depends
// on the rows that come with it, nor on the code path (AMX-INT8, AVX-512 VNNI, portable C++, or weights.py's
// `exact_product`), bit for bit.
//
// Weights are packed in tiles of 16 outputs, [N/16, K/4, 16, 4], K padded to a multiple of 64 with zeros:
// - AVX-512 VNNI: one 64-byte load holds four k of 16 outputs; they widen to 16 bits, and dpwssd multiplies each
//   pair by a pair of 16-bit inputs, into two sums per output.
// - AMX-INT8, for blocks of 16 rows (a verify forward's, a prompt's; the rows left over go through VNNI): 64 k of a
//   tile are one B tile as AMX lays it out. Each 16-bit input q splits into a high byte h (signed) and a low byte l
//   (unsigned), q = 256 h + l; tdpbssd sums h * w, tdpbusd l * w, and 256 * the first + the second is the same
//   integer sum, bit for bit (it fits 32 bits by `levels`, so wrapping in between changes nothing).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kTile = 16;
// How far ahead of its loads a tile loop asks for the weights (bytes), into L2 (`_MM_HINT_T1`): the memory's own
// prefetcher starts each stream late, and one layer's products are short streams. Measured here on a step's
// products: into L2 14 KiB ahead, about 15% faster than into L1 (`_MM_HINT_T0`) 6 KiB ahead, itself 5% faster than
// none; multiples of 4 KiB (16 KiB, 32 KiB) were slower than none, and `_MM_HINT_NTA` 1.7 times slower.
constexpr int64_t kAhead = 14336;

// 1 / RMS(x) for Gemma's RMSNorm: x * (1 / sqrt(mean(x^2) + eps)) * (1 + weight).
float inverse_rms(const float* x, int64_t D, float eps) {
  double squares = 0.0;  // in double: a row's sum of squares, exact enough that its order does not matter
  for (int64_t i = 0; i < D; ++i) squares += static_cast<double>(x[i]) * x[i];
  return static_cast<float>(1.0 / std::sqrt(squares / static_cast<double>(D) + eps));
}

// x [K] -> q [Kp] (zero padding); returns max|x| / L.
float quantize_row(const float* x, int64_t K, int64_t Kp, int16_t* q, float levels) {
  float largest = 0.f;
  for (int64_t k = 0; k < K; ++k) largest = std::fmax(largest, std::fabs(x[k]));
  if (largest < 1e-30f) largest = 1e-30f;
  const float inverse = levels / largest;
  for (int64_t k = 0; k < K; ++k) q[k] = static_cast<int16_t>(std::nearbyint(x[k] * inverse));
  for (int64_t k = K; k < Kp; ++k) q[k] = 0;
  return largest / levels;
}

// `quantize_row` in AVX-512, the same numbers: the same largest magnitude and product, rounded half to even as
// nearbyint does in the default rounding mode.
__attribute__((target("avx512f,avx512bw")))
float quantize_row16(const float* x, int64_t K, int64_t Kp, int16_t* q, float levels) {
  __m512 largest16 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) largest16 = _mm512_max_ps(largest16, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
  float largest = _mm512_reduce_max_ps(largest16);
  for (; k < K; ++k) largest = std::fmax(largest, std::fabs(x[k]));
  if (largest < 1e-30f) largest = 1e-30f;
  const float inverse = levels / largest;
  const __m512 by = _mm512_set1_ps(inverse);
  for (k = 0; k + 16 <= K; k += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k),
                        _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), by))));
  for (; k < K; ++k) q[k] = static_cast<int16_t>(std::nearbyint(x[k] * inverse));
  for (k = K; k < Kp; ++k) q[k] = 0;
  return largest / levels;
}

// One tile's 16 results of one row.
void finish(const int32_t* sums, const float* scale, float row_scale, float* y) {
  for (int64_t i = 0; i < kTile; ++i) y[i] = static_cast<float>(sums[i]) * (scale[i] * row_scale);
}

// `finish` in AVX-512: the same two roundings (scale times row_scale, then the product), so the same bits.
__attribute__((target("avx512f"))) inline void finish16(__m512i sums, const float* scale, float row_scale, float* y) {
  const __m512 scales = _mm512_mul_ps(_mm512_loadu_ps(scale), _mm512_set1_ps(row_scale));
  _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(sums), scales));
}

// The largest of a tile's 16 scores.
__attribute__((target("avx512f"))) inline float largest16(const float* v) {
  return _mm512_reduce_max_ps(_mm512_loadu_ps(v));
}

// Four k of the tile's 16 outputs, widened to 16 bits: outputs 0-7 from the first 32 bytes, 8-15 from the second.
__attribute__((target("avx512f,avx512bw"))) inline __m512i w4(const int8_t* p) {
  return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Four 16-bit inputs, in every 64-bit lane: against `w4`, dpwssd sums k 0-1 in an output's even 32-bit lane and
// k 2-3 in its odd one.
__attribute__((target("avx512f"))) inline __m512i x4(const int16_t* p) {
  return _mm512_set1_epi64(*reinterpret_cast<const int64_t*>(p));
}

// The 16 sums of one row from its two accumulators (outputs 0-7, 8-15; each output's two lanes added).
__attribute__((target("avx512f"))) inline __m512i pair_sums(__m512i low, __m512i high) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  return _mm512_add_epi32(_mm512_permutex2var_epi32(low, even, high), _mm512_permutex2var_epi32(low, odd, high));
}

__attribute__((target("avx512f,avx512bw,avx512vnni")))
void tile_vnni(const int16_t* q, const float* row_scale, int64_t T, int64_t Kp, const int8_t* tile, const float* scale,
               float* y, int64_t Np) {
  const int64_t steps = Kp / 4;
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) {  // four rows share each load of the tile
    const int16_t* r = q + t * Kp;
    __m512i l0 = _mm512_setzero_si512(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0, h3 = l0;
    for (int64_t s = 0; s < steps; ++s) {
      _mm_prefetch(reinterpret_cast<const char*>(tile + s * 64 + kAhead), _MM_HINT_T1);
      const __m512i wl = w4(tile + s * 64), wh = w4(tile + s * 64 + 32);
      __m512i x = x4(r + 4 * s);
      l0 = _mm512_dpwssd_epi32(l0, x, wl);
      h0 = _mm512_dpwssd_epi32(h0, x, wh);
      x = x4(r + Kp + 4 * s);
      l1 = _mm512_dpwssd_epi32(l1, x, wl);
      h1 = _mm512_dpwssd_epi32(h1, x, wh);
      x = x4(r + 2 * Kp + 4 * s);
      l2 = _mm512_dpwssd_epi32(l2, x, wl);
      h2 = _mm512_dpwssd_epi32(h2, x, wh);
      x = x4(r + 3 * Kp + 4 * s);
      l3 = _mm512_dpwssd_epi32(l3, x, wl);
      h3 = _mm512_dpwssd_epi32(h3, x, wh);
    }
    finish16(pair_sums(l0, h0), scale, row_scale[t], y + t * Np);
    finish16(pair_sums(l1, h1), scale, row_scale[t + 1], y + (t + 1) * Np);
    finish16(pair_sums(l2, h2), scale, row_scale[t + 2], y + (t + 2) * Np);
    finish16(pair_sums(l3, h3), scale, row_scale[t + 3], y + (t + 3) * Np);
  }
  for (; t < T; ++t) {  // one row: two chains of sums per half, so each dpwssd need not wait for the last
    const int16_t* r = q + t * Kp;
    __m512i la = _mm512_setzero_si512(), ha = la, lb = la, hb = la;
    int64_t s = 0;
    for (; s + 2 <= steps; s += 2) {
      _mm_prefetch(reinterpret_cast<const char*>(tile + s * 64 + kAhead), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(tile + s * 64 + 64 + kAhead), _MM_HINT_T1);
      const __m512i xa = x4(r + 4 * s), xb = x4(r + 4 * s + 4);
      la = _mm512_dpwssd_epi32(la, xa, w4(tile + s * 64));
      ha = _mm512_dpwssd_epi32(ha, xa, w4(tile + s * 64 + 32));
      lb = _mm512_dpwssd_epi32(lb, xb, w4(tile + s * 64 + 64));
      hb = _mm512_dpwssd_epi32(hb, xb, w4(tile + s * 64 + 96));
    }
    for (; s < steps; ++s) {
      const __m512i xa = x4(r + 4 * s);
      la = _mm512_dpwssd_epi32(la, xa, w4(tile + s * 64));
      ha = _mm512_dpwssd_epi32(ha, xa, w4(tile + s * 64 + 32));
    }
    finish16(pair_sums(_mm512_add_epi32(la, lb), _mm512_add_epi32(ha, hb)), scale, row_scale[t], y + t * Np);
  }
}

// AMX's tile configuration (palette 1): tiles 0-1 the sums of 16 rows x 16 outputs (int32), 2-3 16 rows x 64 k of
// the inputs' high and low bytes, 4 a tile's 64 k as AMX's B operand (16 rows of 4 k x 16 outputs).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16};
};

// Holds AMX's tiles configured for the calling thread while in scope (each thread has its own).
struct AmxTiles {
  bool on;
  __attribute__((target("amx-tile"))) explicit AmxTiles(bool use) : on(use) {
    static const TileConfig config;
    if (on) _tile_loadconfig(&config);
  }
  __attribute__((target("amx-tile"))) ~AmxTiles() {
    if (on) _tile_release();
  }
};

// The inputs of the whole blocks of 16 rows, split for AMX: q = 256 * high + low.
struct BytePlanes {
  std::vector<int8_t> high;  // [amx_rows, Kp]
  std::vector<uint8_t> low;  // [amx_rows, Kp]
};

// Rows 0..T (a whole number of blocks of 16).
__attribute__((target("amx-tile,amx-int8,avx512f")))
void tile_amx(const int8_t* high_bytes, const uint8_t* low_bytes, const float* row_scale, int64_t T, int64_t Kp,
              const int8_t* tile, const float* scale, float* y, int64_t Np) {
  alignas(64) int32_t high[kTile][kTile], low[kTile][kTile];
  for (int64_t t0 = 0; t0 < T; t0 += 16) {
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t k = 0; k < Kp; k += 64) {
      _tile_loadd(2, high_bytes + t0 * Kp + k, Kp);
      _tile_loadd(3, low_bytes + t0 * Kp + k, Kp);
      _tile_loadd(4, tile + k * kTile, 64);
      _tile_dpbssd(0, 2, 4);
      _tile_dpbusd(1, 3, 4);
    }
    _tile_stored(0, high, 64);
    _tile_stored(1, low, 64);
    for (int64_t r = 0; r < 16; ++r) {  // 256 high + low, wrapping where int32 would overflow: the sum itself fits
      const __m512i sums = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512(high[r]), 8),
                                            _mm512_load_si512(low[r]));
      finish16(sums, scale, row_scale[t0 + r], y + (t0 + r) * Np);
    }
  }
}

void tile_portable(const int16_t* q, const float* row_scale, int64_t T, int64_t Kp, const int8_t* tile,
                   const float* scale, float* y, int64_t Np) {
  int32_t sums[kTile];
  for (int64_t t = 0; t < T; ++t) {
    const int16_t* r = q + t * Kp;
    for (int64_t i = 0; i < kTile; ++i) sums[i] = 0;
    for (int64_t s = 0; s < Kp / 4; ++s)
      for (int64_t i = 0; i < kTile; ++i)
        for (int64_t j = 0; j < 4; ++j)
          sums[i] += static_cast<int32_t>(r[4 * s + j]) * static_cast<int32_t>(tile[s * 64 + 4 * i + j]);
    finish(sums, scale, row_scale[t], y + t * Np);
  }
}

bool has_vnni() { return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw"); }

// AMX-INT8 and AMX-TILE (CPUID leaf 7, EDX bits 25 and 24), and Linux's leave to use the tiles' 8 KB of state,
// asked once a process (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA).
bool has_amx() {
  static const bool usable = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!has_vnni() || !__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 25) & 1)) return false;
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return usable;
}

// The code paths, as `path` names them in the operators.
enum Path : int64_t { kPortable = 0, kVnni = 1, kAmx = 2 };

// The operands of one product: x's rows rounded to integers, and the packed weights' shape.
struct Operands {
  int64_t T, K, Np, Kp;
  Path path;                     // AMX only from 16 rows; VNNI below
  int64_t amx_rows;              // rows 0..amx_rows go through AMX: its whole blocks of 16
  std::vector<int16_t> q;        // [T, Kp]
  std::vector<float> row_scale;  // [T]
  BytePlanes planes;             // for AMX
};

// x [T, n_in] float32 and packed [Np/16, Kp/4, 16, 4] int8 -> x's rows, RMS-normed first with `in_norm` (times
// in_norm [n_in]), each rounded to integers of at most `levels`.
Operands round_inputs(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, int64_t n_in,
                      int64_t n_out, int64_t levels, int64_t path, const std::optional<at::Tensor>& in_norm,
                      double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be contiguous float32 [T, K]");
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == kTile && packed.size(3) == 4 && packed.is_contiguous() &&
                  packed.scalar_type() == at::kChar, "packed must be contiguous int8 [N/16, K/4, 16, 4]");
  Operands o{x.size(0), x.size(1), packed.size(0) * kTile, packed.size(1) * 4, kPortable, 0, {}, {}, {}};
  TORCH_CHECK(o.K == n_in, "x [T, K] must have K = n_in = ", n_in, " inputs, not ", o.K);
  TORCH_CHECK(o.K <= o.Kp && o.Kp < o.K + 64 && o.Kp % 64 == 0 && n_out <= o.Np && o.Np < n_out + kTile,
              "packed [Np/16, Kp/4, 16, 4] does not hold n_in x n_out weights");
  TORCH_CHECK(scale.numel() == o.Np && scale.scalar_type() == at::kFloat, "scale needs one float32 per output");
  TORCH_CHECK(path == kPortable || (path == kVnni && has_vnni()) || (path == kAmx && has_amx()),
              "path: 0 portable, 1 AVX-512 VNNI, 2 AMX-INT8, one this CPU has");
  TORCH_CHECK(0 < levels && levels <= 32767 && levels * 127 * o.K <= 2147483647,
              "levels: 16-bit inputs whose sums with K int8 weights fit 32 bits");
  o.path = path == kAmx && o.T < 16 ? kVnni : static_cast<Path>(path);  // AMX takes whole blocks of 16 rows
  TORCH_CHECK(!in_norm || in_norm->numel() == o.K, "in_norm needs one weight per input");
  o.q.resize(o.T * o.Kp);
  o.row_scale.resize(o.T);
  o.amx_rows = o.path == kAmx ? o.T / 16 * 16 : 0;
  o.planes.high.resize(o.amx_rows * o.Kp);
  o.planes.low.resize(o.amx_rows * o.Kp);
  const float* xp = x.data_ptr<float>();
  const float* in_w = in_norm ? in_norm->data_ptr<float>() : nullptr;
  at::parallel_for(0, o.T, 16, [&](int64_t begin, int64_t end) {  // a prompt's rows; a few rows: this thread
    std::vector<float> normed(in_w ? o.K : 0);
    for (int64_t t = begin; t < end; ++t) {
      const float* row = xp + t * o.K;
      if (in_w) {
        const float inverse = inverse_rms(row, o.K, static_cast<float>(eps));
        for (int64_t k = 0; k < o.K; ++k) normed[k] = row[k] * inverse * in_w[k];
        row = normed.data();
      }
      int16_t* q = o.q.data() + t * o.Kp;
      o.row_scale[t] = o.path == kPortable ? quantize_row(row, o.K, o.Kp, q, static_cast<float>(levels))
                                           : quantize_row16(row, o.K, o.Kp, q, static_cast<float>(levels));
      if (t < o.amx_rows)
        for (int64_t k = 0; k < o.Kp; ++k) {
          o.planes.high[t * o.Kp + k] = static_cast<int8_t>(q[k] >> 8);  // arithmetic shift: the signed high byte
          o.planes.low[t * o.Kp + k] = static_cast<uint8_t>(q[k] & 0xff);
        }
    }
  });
  return o;
}

// Tile j's results of rows t0..t1 into y (row stride `stride`); with AMX, inside an `AmxTiles` scope.
void tile(const Operands& o, const int8_t* packed, const float* scale, int64_t j, float* y, int64_t stride,
          int64_t t0, int64_t t1) {
  const int64_t n = j * kTile;
  const int8_t* weights = packed + n * o.Kp;
  int64_t t = t0;
  if (o.path == kAmx) {  // AMX's rows; the rest, whose tile is in cache now, through VNNI
    const int64_t blocks = std::max(t0, std::min(t1, o.amx_rows));
    tile_amx(o.planes.high.data() + t0 * o.Kp, o.planes.low.data() + t0 * o.Kp, o.row_scale.data() + t0,
             blocks - t0, o.Kp, weights, scale + n, y + t0 * stride, stride);
    t = blocks;
  }
  if (o.path == kPortable)
    tile_portable(o.q.data() + t * o.Kp, o.row_scale.data() + t, t1 - t, o.Kp, weights, scale + n, y + t * stride,
                  stride);
  else
    tile_vnni(o.q.data() + t * o.Kp, o.row_scale.data() + t, t1 - t, o.Kp, weights, scale + n, y + t * stride,
              stride);
}

// Rows at a time through one pass over the weights: a prompt's inputs would not stay in cache across the tiles.
constexpr int64_t kRowChunk = 64;

// x [T, K] float32; packed [Np/16, Kp/4, 16, 4] int8; scale [Np] -> [T, N] float32. With `in_norm`, x's rows are
// RMS-normed first (times in_norm [K]); with `out_norm`, the result's rows are, and `residual` [T, N] is added.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, int64_t n_in,
                       int64_t n_out, int64_t levels, int64_t path, const std::optional<at::Tensor>& in_norm,
                       const std::optional<at::Tensor>& out_norm, const std::optional<at::Tensor>& residual,
                       double eps) {
  const Operands o = round_inputs(x, packed, scale, n_in, n_out, levels, path, in_norm, eps);
  const int64_t T = o.T, Np = o.Np;
  at::Tensor y = at::empty({T, Np}, x.options());
  float* yp = y.data_ptr<float>();
  for (int64_t t0 = 0; t0 < T; t0 += kRowChunk) {
    const int64_t t1 = std::min(T, t0 + kRowChunk);
    at::parallel_for(0, Np / kTile, 1, [&](int64_t begin, int64_t end) {
      const AmxTiles tiles(o.path == kAmx);
      for (int64_t j = begin; j < end; ++j)
        tile(o, packed.data_ptr<int8_t>(), scale.data_ptr<float>(), j, yp + j * kTile, Np, t0, t1);
    });
  }
  if (n_out != Np) y = y.narrow(1, 0, n_out).contiguous();
  if (!out_norm) return y;
  TORCH_CHECK(out_norm->numel() == n_out &&
                  (!residual || (residual->is_contiguous() && residual->sizes() == y.sizes())),
              "out_norm needs one weight per output, residual the result's shape");
  const float* out_w = out_norm->data_ptr<float>();
  const float* add = residual ? residual->data_ptr<float>() : nullptr;
  float* yo = y.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {  // each row on its own: any split, the same numbers
    for (int64_t t = begin; t < end; ++t) {
      float* row = yo + t * n_out;
      const float inverse = inverse_rms(row, n_out, static_cast<float>(eps));
      for (int64_t n = 0; n < n_out; ++n) row[n] = row[n] * inverse * out_w[n] + (add ? add[t * n_out + n] : 0.f);
    }
  });
  return y;
}

// The index of each row's largest result of `int8_linear` (the lowest on a tie, as torch's argmax), without writing
// the results: for the output layer, whose 262,144 scores a greedy step only compares. -> [T] int64.
at::Tensor int8_argmax(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, int64_t n_in,
                       int64_t n_out, int64_t levels, int64_t path) {
  const Operands o = round_inputs(x, packed, scale, n_in, n_out, levels, path, std::nullopt, 0.0);
  const int64_t T = o.T, threads = at::get_num_threads();
  const bool vector = o.path != kPortable;
  std::vector<float> best(threads * T, -std::numeric_limits<float>::infinity());
  std::vector<int64_t> index(threads * T, n_out);
  at::parallel_for(0, o.Np / kTile, 1, [&](int64_t begin, int64_t end) {
    const int64_t mine = at::get_thread_num() * T;
    const AmxTiles tiles(o.path == kAmx);
    std::vector<float> scores(T * kTile);
    for (int64_t j = begin; j < end; ++j) {
      tile(o, packed.data_ptr<int8_t>(), scale.data_ptr<float>(), j, scores.data(), kTile, 0, T);
      for (int64_t t = 0; t < T; ++t) {
        const float* v = scores.data() + t * kTile;
        // a whole tile whose largest score does not beat the best so far changes nothing: this thread's tiles come
        // in order, so a tie here is with a lower index
        if (vector && (j + 1) * kTile <= n_out && largest16(v) <= best[mine + t]) continue;
        for (int64_t i = 0; i < kTile && j * kTile + i < n_out; ++i) {
          const int64_t n = j * kTile + i;
          if (v[i] > best[mine + t] || (v[i] == best[mine + t] && n < index[mine + t])) {
            best[mine + t] = v[i];
            index[mine + t] = n;
          }
        }
      }
    }
  });
  at::Tensor result = at::empty({T}, x.options().dtype(at::kLong));
  for (int64_t t = 0; t < T; ++t) {
    int64_t winner = t;
    for (int64_t h = 1; h < threads; ++h) {
      const int64_t c = h * T + t;
      if (best[c] > best[winner] || (best[c] == best[winner] && index[c] < index[winner])) winner = c;
    }
    result.data_ptr<int64_t>()[t] = index[winner];
  }
  return result;
}

// Gemma's attention inputs of T rows at positions start..: q and k heads RMS-normed (times qk_scale [H+Hkv, Dh])
// and rotated (rotate-half RoPE: cos, sin_signed [T, Dh]); k and v written to layer `layer` of the caches
// [L, Hkv, S, Dh]. qkv [T, (H+2Hkv) Dh] -> q [H, T, Dh].
at::Tensor qk_rope_cache(const at::Tensor& qkv, const at::Tensor& qk_scale, const at::Tensor& cos,
                         const at::Tensor& sin_signed, at::Tensor& cache_k, at::Tensor& cache_v, int64_t layer,
                         int64_t start, double eps) {
  const int64_t T = qkv.size(0), Dh = qk_scale.size(1), Hqk = qk_scale.size(0), Hkv = cache_k.size(1);
  const int64_t H = Hqk - Hkv, S = cache_k.size(2), half = Dh / 2;
  TORCH_CHECK(qkv.is_contiguous() && qkv.size(1) == (Hqk + Hkv) * Dh && cos.is_contiguous() &&
                  sin_signed.is_contiguous() && cos.size(0) == T && cache_k.is_contiguous() &&
                  cache_v.is_contiguous() && start + T <= S,
              "qk_rope_cache: shapes do not match");
  at::Tensor q = at::empty({H, T, Dh}, qkv.options());
  const float* in = qkv.data_ptr<float>();
  const float* w = qk_scale.data_ptr<float>();
  float* qo = q.data_ptr<float>();
  float* ko = cache_k.data_ptr<float>() + layer * Hkv * S * Dh;
  float* vo = cache_v.data_ptr<float>() + layer * Hkv * S * Dh;
  at::parallel_for(0, T, 16, [&](int64_t begin, int64_t end) {  // a prompt's rows; each row on its own
    std::vector<float> normed(Dh);
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cos.data_ptr<float>() + t * Dh;
      const float* s = sin_signed.data_ptr<float>() + t * Dh;
      for (int64_t h = 0; h < Hqk; ++h) {
        const float* head = in + (t * (Hqk + Hkv) + h) * Dh;
        const float inverse = inverse_rms(head, Dh, static_cast<float>(eps));
        for (int64_t d = 0; d < Dh; ++d) normed[d] = head[d] * inverse * w[h * Dh + d];
        float* out = h < H ? qo + (h * T + t) * Dh : ko + ((h - H) * S + start + t) * Dh;
        for (int64_t d = 0; d < Dh; ++d) out[d] = normed[d] * c[d] + normed[(d + half) % Dh] * s[d];
      }
      for (int64_t h = 0; h < Hkv; ++h) {
        const float* head = in + (t * (Hqk + Hkv) + Hqk + h) * Dh;
        std::copy(head, head + Dh, vo + (h * S + start + t) * Dh);
      }
    }
  });
  return q;
}

}  // namespace

TORCH_LIBRARY(retain, m) {
  m.def("int8_linear(Tensor x, Tensor packed, Tensor scale, int n_in, int n_out, int levels, int path, "
        "Tensor? in_norm, Tensor? out_norm, Tensor? residual, float eps) -> Tensor", &int8_linear);
  m.def("qk_rope_cache(Tensor qkv, Tensor qk_scale, Tensor cos, Tensor sin_signed, Tensor(a!) cache_k, "
        "Tensor(b!) cache_v, int layer, int start, float eps) -> Tensor", &qk_rope_cache);
  m.def("int8_argmax(Tensor x, Tensor packed, Tensor scale, int n_in, int n_out, int levels, int path) -> Tensor",
        &int8_argmax);
  m.def("has_vnni() -> bool", &has_vnni);
  m.def("has_amx() -> bool", &has_amx);
}
