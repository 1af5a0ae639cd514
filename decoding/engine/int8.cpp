// The product of the embedded engine's int8 weights (weights.py, Int8Matrix), built on first use (kernels.py).
//
// y[t, n] = float(sum_k q[t, k] * w[n, k]) * (scale[n] * row_scale[t]), where w is int8 with one scale per output
// row, and each input row is rounded to integers of at most L in magnitude (`levels`; weights.py takes the most
// whose sums cannot overflow 32 bits: 26,406 for K = 640, 8,256 for K = 2,048): q = round(x[t] * L / max|x[t]|),
// row_scale[t] = max|x[t]| / L. Inputs keep 14 to 16 bits, so the weights' rounding is nearly all the format
// loses. The sums are integers, exact in any order, and each row is rounded on its own: a row's result never depends
// on the rows that come with it, nor on the code path (AVX-512 VNNI, portable C++, or weights.py's `exact_product`),
// bit for bit.
//
// Weights are packed in tiles of 16 outputs, [N/16, K/2, 16, 2]: one 32-byte load holds two k of 16 outputs, which
// widen to 16-bit and VNNI's dpwssd multiplies by two 16-bit inputs, into 16 sums.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <immintrin.h>

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

// One tile's 16 results of one row.
void finish(const int32_t* sums, const float* scale, float row_scale, float* y) {
  for (int64_t i = 0; i < kTile; ++i) y[i] = static_cast<float>(sums[i]) * (scale[i] * row_scale);
}

// Two 16-bit inputs, in every 32-bit lane.
__attribute__((target("avx512f"))) inline __m512i x2(const int16_t* p) {
  return _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(p));
}

// Two k of the tile's 16 outputs, widened to 16 bits.
__attribute__((target("avx512f,avx512bw"))) inline __m512i w2(const int8_t* p) {
  return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

__attribute__((target("avx512f,avx512bw,avx512vnni")))
void tile_vnni(const int16_t* q, const float* row_scale, int64_t T, int64_t Kp, const int8_t* tile, const float* scale,
               float* y, int64_t Np) {
  const int64_t steps = Kp / 2;
  alignas(64) int32_t sums[4][kTile];
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) {  // four rows share each load of the tile
    const int16_t* r = q + t * Kp;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t s = 0; s < steps; ++s) {
      if (s % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(tile + s * 32 + kAhead), _MM_HINT_T1);
      const __m512i w = w2(tile + s * 32);
      a0 = _mm512_dpwssd_epi32(a0, x2(r + 2 * s), w);
      a1 = _mm512_dpwssd_epi32(a1, x2(r + Kp + 2 * s), w);
      a2 = _mm512_dpwssd_epi32(a2, x2(r + 2 * Kp + 2 * s), w);
      a3 = _mm512_dpwssd_epi32(a3, x2(r + 3 * Kp + 2 * s), w);
    }
    _mm512_store_si512(sums[0], a0);
    _mm512_store_si512(sums[1], a1);
    _mm512_store_si512(sums[2], a2);
    _mm512_store_si512(sums[3], a3);
    for (int64_t i = 0; i < 4; ++i) finish(sums[i], scale, row_scale[t + i], y + (t + i) * Np);
  }
  for (; t < T; ++t) {  // one row: four chains of sums, so each dpwssd need not wait for the last
    const int16_t* r = q + t * Kp;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    int64_t s = 0;
    for (; s + 4 <= steps; s += 4) {
      _mm_prefetch(reinterpret_cast<const char*>(tile + s * 32 + kAhead), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(tile + s * 32 + 64 + kAhead), _MM_HINT_T1);
      a0 = _mm512_dpwssd_epi32(a0, x2(r + 2 * s), w2(tile + s * 32));
      a1 = _mm512_dpwssd_epi32(a1, x2(r + 2 * s + 2), w2(tile + s * 32 + 32));
      a2 = _mm512_dpwssd_epi32(a2, x2(r + 2 * s + 4), w2(tile + s * 32 + 64));
      a3 = _mm512_dpwssd_epi32(a3, x2(r + 2 * s + 6), w2(tile + s * 32 + 96));
    }
    for (; s < steps; ++s) a0 = _mm512_dpwssd_epi32(a0, x2(r + 2 * s), w2(tile + s * 32));
    _mm512_store_si512(sums[0], _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
    finish(sums[0], scale, row_scale[t], y + t * Np);
  }
}

void tile_portable(const int16_t* q, const float* row_scale, int64_t T, int64_t Kp, const int8_t* tile,
                   const float* scale, float* y, int64_t Np) {
  int32_t sums[kTile];
  for (int64_t t = 0; t < T; ++t) {
    const int16_t* r = q + t * Kp;
    for (int64_t i = 0; i < kTile; ++i) sums[i] = 0;
    for (int64_t s = 0; s < Kp / 2; ++s)
      for (int64_t i = 0; i < kTile; ++i)
        for (int64_t j = 0; j < 2; ++j)
          sums[i] += static_cast<int32_t>(r[2 * s + j]) * static_cast<int32_t>(tile[s * 32 + 2 * i + j]);
    finish(sums, scale, row_scale[t], y + t * Np);
  }
}

bool has_vnni() { return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw"); }

// The operands of one product: x's rows rounded to integers, and the packed weights' shape.
struct Operands {
  int64_t T, K, Np, Kp;
  std::vector<int16_t> q;       // [T, Kp]
  std::vector<float> row_scale;  // [T]
};

// x [T, K] float32 and packed [Np/16, Kp/2, 16, 2] int8 -> x's rows, RMS-normed first with `in_norm` (times in_norm
// [K]), each rounded to integers of at most `levels`.
Operands round_inputs(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, int64_t n_out,
                      int64_t levels, bool vnni, const std::optional<at::Tensor>& in_norm, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be contiguous float32 [T, K]");
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == kTile && packed.size(3) == 2 && packed.is_contiguous() &&
                  packed.scalar_type() == at::kChar, "packed must be contiguous int8 [N/16, K/2, 16, 2]");
  Operands o{x.size(0), x.size(1), packed.size(0) * kTile, packed.size(1) * 2, {}, {}};
  TORCH_CHECK(o.K <= o.Kp && o.Kp < o.K + 2 && n_out <= o.Np && o.Np < n_out + kTile, "x [T, K] does not fit packed");
  TORCH_CHECK(scale.numel() == o.Np && scale.scalar_type() == at::kFloat, "scale needs one float32 per output");
  TORCH_CHECK(!vnni || has_vnni(), "this CPU has no AVX-512 VNNI");
  TORCH_CHECK(0 < levels && levels <= 32767 && levels * 127 * o.Kp <= 2147483647,
              "levels: 16-bit inputs whose sums with K int8 weights fit 32 bits");
  TORCH_CHECK(!in_norm || in_norm->numel() == o.K, "in_norm needs one weight per input");
  o.q.resize(o.T * o.Kp);
  o.row_scale.resize(o.T);
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
      o.row_scale[t] = quantize_row(row, o.K, o.Kp, o.q.data() + t * o.Kp, static_cast<float>(levels));
    }
  });
  return o;
}

// Tile j's results of every row into y (row stride `stride`).
void tile(const Operands& o, bool vnni, const int8_t* packed, const float* scale, int64_t j, float* y,
          int64_t stride) {
  const int64_t n = j * kTile;
  if (vnni) tile_vnni(o.q.data(), o.row_scale.data(), o.T, o.Kp, packed + n * o.Kp, scale + n, y, stride);
  else tile_portable(o.q.data(), o.row_scale.data(), o.T, o.Kp, packed + n * o.Kp, scale + n, y, stride);
}

// x [T, K] float32; packed [Np/16, Kp/2, 16, 2] int8; scale [Np] -> [T, N] float32. With `in_norm`, x's rows are
// RMS-normed first (times in_norm [K]); with `out_norm`, the result's rows are, and `residual` [T, N] is added.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, int64_t n_out,
                       int64_t levels, bool vnni, const std::optional<at::Tensor>& in_norm,
                       const std::optional<at::Tensor>& out_norm, const std::optional<at::Tensor>& residual,
                       double eps) {
  const Operands o = round_inputs(x, packed, scale, n_out, levels, vnni, in_norm, eps);
  const int64_t T = o.T, Np = o.Np;
  at::Tensor y = at::empty({T, Np}, x.options());
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, Np / kTile, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) tile(o, vnni, packed.data_ptr<int8_t>(), scale.data_ptr<float>(), j,
                                               yp + j * kTile, Np);
  });
  if (n_out != Np) y = y.narrow(1, 0, n_out).contiguous();
  if (!out_norm) return y;
  TORCH_CHECK(out_norm->numel() == n_out &&
                  (!residual || (residual->is_contiguous() && residual->sizes() == y.sizes())),
              "out_norm needs one weight per output, residual the result's shape");
  const float* out_w = out_norm->data_ptr<float>();
  const float* add = residual ? residual->data_ptr<float>() : nullptr;
  float* yo = y.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    float* row = yo + t * n_out;
    const float inverse = inverse_rms(row, n_out, static_cast<float>(eps));
    for (int64_t n = 0; n < n_out; ++n) row[n] = row[n] * inverse * out_w[n] + (add ? add[t * n_out + n] : 0.f);
  }
  return y;
}

// The index of each row's largest result of `int8_linear` (the lowest on a tie, as torch's argmax), without writing
// the results: for the output layer, whose 262,144 scores a greedy step only compares. -> [T] int64.
at::Tensor int8_argmax(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, int64_t n_out,
                       int64_t levels, bool vnni) {
  const Operands o = round_inputs(x, packed, scale, n_out, levels, vnni, std::nullopt, 0.0);
  const int64_t T = o.T, threads = at::get_num_threads();
  std::vector<float> best(threads * T, -std::numeric_limits<float>::infinity());
  std::vector<int64_t> index(threads * T, n_out);
  at::parallel_for(0, o.Np / kTile, 1, [&](int64_t begin, int64_t end) {
    const int64_t mine = at::get_thread_num() * T;
    std::vector<float> scores(T * kTile);
    for (int64_t j = begin; j < end; ++j) {
      tile(o, vnni, packed.data_ptr<int8_t>(), scale.data_ptr<float>(), j, scores.data(), kTile);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < kTile && j * kTile + i < n_out; ++i) {
          const float v = scores[t * kTile + i];
          const int64_t n = j * kTile + i;
          if (v > best[mine + t] || (v == best[mine + t] && n < index[mine + t])) {
            best[mine + t] = v;
            index[mine + t] = n;
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
  std::vector<float> normed(Dh);
  for (int64_t t = 0; t < T; ++t) {
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
  return q;
}

}  // namespace

TORCH_LIBRARY(retain, m) {
  m.def("int8_linear(Tensor x, Tensor packed, Tensor scale, int n_out, int levels, bool vnni, Tensor? in_norm, "
        "Tensor? out_norm, Tensor? residual, float eps) -> Tensor", &int8_linear);
  m.def("qk_rope_cache(Tensor qkv, Tensor qk_scale, Tensor cos, Tensor sin_signed, Tensor(a!) cache_k, "
        "Tensor(b!) cache_v, int layer, int start, float eps) -> Tensor", &qk_rope_cache);
  m.def("int8_argmax(Tensor x, Tensor packed, Tensor scale, int n_out, int levels, bool vnni) -> Tensor",
        &int8_argmax);
  m.def("has_vnni() -> bool", &has_vnni);
}
