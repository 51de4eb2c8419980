// Weight-only low-precision matmuls for MindSpore's ops.Custom(func_type="aot") on CPU, inference
// only (no backward):
//
//   W8A16MatMul(x, w, scale, y):  y[m, n] = scale[n] * sum_k x[m, k] * w[n, k],  w int8 [N, K]
//   FloatWMatMul(x, w, y):        y[m, n] =            sum_k x[m, k] * w[n, k],  w float16 or
//                                                                                float32 [N, K]
//
// x [M, K] float32 or float16 activations, scale [N] float32 per-output-row scales, y [M, N] in
// x's dtype (torch layout [out, in] for w). The weights are widened to FP32 exactly (w8::Widen) and
// never stored back as a dequantized copy of the whole matrix. Accumulation is FP32, the scale
// multiplies the FP32 sum, then y is rounded to its dtype once (FP16 outputs cannot overflow on
// the way). Return codes: 0, or 1 (arity), 2 (dtypes), 3 (shapes).
//
// Two algorithms, by the number of activation rows M:
//
// * M < kGemmMinM (decode): memory-bound on w. Groups of 4 weight rows are widened in registers
//   and multiplied with up to kDecodeMR x rows at a time (vector accumulators along k, horizontal
//   sums at the end of a K block); for M > kDecodeMR the group's K block is re-read from L1, so
//   every weight byte comes from memory once. Threads split the weight rows. At up to 2 x rows the
//   loop is bound by streaming w, and a core's own streaming stalls are not hidden by the hardware
//   prefetcher: each group prefetches the next group's rows at the same k (one group ahead), which
//   raised one core's int8 rate from ~11.7 to ~14.7 GB/s (pure read: ~15.7) on a 2-core Xeon.
//
// * M >= kGemmMinM (prefill): a GEMM computing yᵀ = w · xᵀ (GotoBLAS blocking). x is packed once
//   into panels of kPanel rows, transposed to [k][kPanel] (zero-padded). A task owns kMC weight
//   rows × up to kNC x rows; per K block of kKC it widens its kMC × kKC weights into a
//   thread-local FP32 block (kept in L2: each weight is widened once per task, i.e. once per call
//   when M <= kNC), then a register-blocked micro-kernel computes kMR weight rows × kPanel x rows
//   (2 vectors) with broadcasts of the widened weights and FMAs, the x panel staying in L1
//   across the kMC / kMR micro-kernels. The kMC × kNC FP32 sums stay in a thread-local buffer
//   until the last K block, then are scaled, transposed and rounded into y. Threads take tasks
//   (weight-row blocks × x-row blocks) dynamically.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cg_cpu_common.h"
#include "w8a16_simd.h"

namespace {

using cg::half_t;
using w8::kLanes;
using w8::V;

// ---- shared sizes ----
constexpr int64_t kGemmMinM = 16;             // x rows from which the GEMM path is used
constexpr int64_t kDecodeKBlock = 1024;       // decode: K block (8 x rows of it = 32 KiB of FP32)
constexpr int64_t kDecodeGroup = 4;           // decode: weight rows per task unit
#if defined(__AVX512F__)
#define CG_DECODE_MR8 1
constexpr int64_t kDecodeMR = 8;              // decode: x rows per tile (32 vector registers)
#else
#define CG_DECODE_MR8 0
constexpr int64_t kDecodeMR = 4;              // decode: x rows per tile (16 vector registers)
#endif
// Threads: a helper thread pays off only for about a millisecond of work or more. Measured inside
// MindSpore's CPU runtime (whose own worker threads keep the cores busy between operators), a
// call that starts one helper thread took ~0.7 ms longer than the same call on one thread
// (64 x 256 x 1024, graph mode, 2 cores), far more than the ~30 us a thread costs on an idle core.
constexpr int64_t kMinDecodeBytesPerThread = 8 << 20;  // ~1 ms of weight streaming per thread
constexpr int64_t kMinGemmMacsPerThread = 1 << 26;     // ~1 ms of FMAs per thread

// ---- GEMM blocking (per ISA: registers and cache sizes) ----
#if defined(__AVX512F__)
constexpr int kMR = 12;                       // weight rows per micro-tile: 12 x 2 accumulators
constexpr int64_t kMC = kMR * 16;             // 192 weight rows per task
#elif defined(__AVX2__)
constexpr int kMR = 6;                        // 6 x 2 accumulators + 2 x + 1 broadcast = 15 ymm
constexpr int64_t kMC = kMR * 20;             // 120 weight rows per task
#else
constexpr int kMR = 4;
constexpr int64_t kMC = kMR * 16;
#endif
constexpr int64_t kPanel = 2 * kLanes;        // x rows per packed panel (2 vectors)
constexpr int64_t kKC = 256;                  // K block: the widened weight block is kMC x kKC FP32
constexpr int64_t kNC = 256;                  // x rows per task (a multiple of kPanel)
static_assert(kNC % kPanel == 0, "kNC must hold whole panels");

// Output element conversion.
inline void Put(float v, float *dst) { *dst = v; }
inline void Put(float v, half_t *dst) { *dst = static_cast<half_t>(v); }

// ================================================================================ decode path

// acc[m * ldy + n] += sum_{k < kn} x[m * ldx + k] * w[n * ldw + k] for m < MR, n < NR. Unless
// `next` is null, the cache lines of next[n * ldw + k] (n < NR, k < kn) are prefetched on the way.
template <int MR, int NR, int KU, typename W>
void Tile(const float *x, int64_t ldx, const W *w, int64_t ldw, int64_t kn, float *acc, int64_t ldy,
          const W *next = nullptr) {
  V s[KU][MR][NR];
  for (int u = 0; u < KU; ++u)
    for (int m = 0; m < MR; ++m)
      for (int n = 0; n < NR; ++n) s[u][m][n] = w8::Zero();
  int64_t k = 0;
  for (; k + kLanes * KU <= kn; k += kLanes * KU) {
#if defined(__x86_64__) && (defined(__AVX512F__) || defined(__AVX2__))
    if (next != nullptr && (k * static_cast<int64_t>(sizeof(W))) % 64 == 0) {  // one line per row
      for (int n = 0; n < NR; ++n) _mm_prefetch(reinterpret_cast<const char *>(next + n * ldw + k), _MM_HINT_T0);
    }
#endif
    for (int u = 0; u < KU; ++u) {
      V wv[NR];
      for (int n = 0; n < NR; ++n) wv[n] = w8::Widen(w + n * ldw + k + kLanes * u);
      for (int m = 0; m < MR; ++m) {
        const V xv = w8::Load(x + m * ldx + k + kLanes * u);
        for (int n = 0; n < NR; ++n) s[u][m][n] = w8::Fma(xv, wv[n], s[u][m][n]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NR; ++n) {
      V t = s[0][m][n];
      for (int u = 1; u < KU; ++u) t = w8::Add(t, s[u][m][n]);
      float r = w8::Sum(t);
      const float *xr = x + m * ldx;
      const W *wr = w + n * ldw;
      for (int64_t j = k; j < kn; ++j) r = cg::MulAdd(xr[j], static_cast<float>(wr[j]), r);  // K tail
      acc[m * ldy + n] += r;
    }
  }
}

// mr (runtime, <= 4, or <= 8 with CG_DECODE_MR8) x rows of x against NR weight rows: the Tile for mr.
template <int NR, typename W>
void Rows(int64_t mr, const float *x, int64_t ldx, const W *w, int64_t ldw, int64_t kn, float *acc, int64_t ldy) {
  switch (mr) {
    case 1: Tile<1, NR, 2>(x, ldx, w, ldw, kn, acc, ldy); break;
    case 2: Tile<2, NR, 1>(x, ldx, w, ldw, kn, acc, ldy); break;
    case 3: Tile<3, NR, 1>(x, ldx, w, ldw, kn, acc, ldy); break;
    case 4: Tile<4, NR, 1>(x, ldx, w, ldw, kn, acc, ldy); break;
#if CG_DECODE_MR8
    case 5: Tile<5, NR, 1>(x, ldx, w, ldw, kn, acc, ldy); break;
    case 6: Tile<6, NR, 1>(x, ldx, w, ldw, kn, acc, ldy); break;
    case 7: Tile<7, NR, 1>(x, ldx, w, ldw, kn, acc, ldy); break;
    case 8: Tile<8, NR, 1>(x, ldx, w, ldw, kn, acc, ldy); break;
#endif
  }
}

// Rows [0, mr) (mr <= kDecodeMR) of x against nr <= kDecodeGroup weight rows, one K block. Up to
// 2 x rows: 4 weight rows at a time (M = 1 with two k-steps in flight, 8 accumulators), prefetching
// the same K block of the `next` group's rows; more x rows: 2 weight rows at a time, mr x 2
// accumulators (16 of AVX-512's 32 registers at mr = 8).
template <typename W>
void Group(int64_t mr, int64_t nr, const float *x, int64_t ldx, const W *w, int64_t ldw, int64_t kn, float *acc,
           int64_t ldy, const W *next) {
  if (mr == 1 && nr == kDecodeGroup) return Tile<1, 4, 2>(x, ldx, w, ldw, kn, acc, ldy, next);
  if (mr == 2 && nr == kDecodeGroup) return Tile<2, 4, 1>(x, ldx, w, ldw, kn, acc, ldy, next);
  int64_t n = 0;
  for (; n + 2 <= nr; n += 2) Rows<2>(mr, x, ldx, w + n * ldw, ldw, kn, acc + n, ldy);
  if (n < nr) Rows<1>(mr, x, ldx, w + n * ldw, ldw, kn, acc + n, ldy);  // the last row of w (N odd)
}

// acc [M, N] (FP32, row stride N) for weight rows [nb, ne): acc = x · w[nb:ne]ᵀ (* scale).
template <typename W>
void DecodeRows(const float *x, const W *w, const float *scale, int64_t M, int64_t K, int64_t N, int64_t nb,
                int64_t ne, float *acc) {
  for (int64_t m = 0; m < M; ++m) std::memset(acc + m * N + nb, 0, sizeof(float) * (ne - nb));
  for (int64_t n = nb; n < ne; n += kDecodeGroup) {
    const int64_t nr = std::min(kDecodeGroup, ne - n);
    const bool full_next = n + 2 * kDecodeGroup <= ne;  // the next group is whole and in this range
    for (int64_t k0 = 0; k0 < K; k0 += kDecodeKBlock) {
      const int64_t kn = std::min(kDecodeKBlock, K - k0);
      const W *next = full_next ? w + (n + kDecodeGroup) * K + k0 : nullptr;
      for (int64_t m = 0; m < M; m += kDecodeMR) {
        Group(std::min(kDecodeMR, M - m), nr, x + m * K + k0, K, w + n * K + k0, K, kn, acc + m * N + n, N, next);
      }
    }
  }
  if (scale != nullptr) {
    for (int64_t m = 0; m < M; ++m) {
      float *row = acc + m * N;
      for (int64_t n = nb; n < ne; ++n) row[n] *= scale[n];
    }
  }
}

template <typename X, typename W>
void Decode(const X *x_in, const W *w, const float *scale, int64_t M, int64_t K, int64_t N, X *y) {
  std::vector<float> x32, y32;
  const float *x = reinterpret_cast<const float *>(x_in);
  float *acc = reinterpret_cast<float *>(y);
  if (!std::is_same<X, float>::value) {
    x32.resize(static_cast<size_t>(M * K));
    cg::HalfToFloat(reinterpret_cast<const half_t *>(x_in), x32.data(), M * K);
    x = x32.data();
    y32.resize(static_cast<size_t>(M * N));
    acc = y32.data();
  }
  const int64_t groups = (N + kDecodeGroup - 1) / kDecodeGroup;
  const int64_t group_bytes = kDecodeGroup * std::max<int64_t>(K, 1) * static_cast<int64_t>(sizeof(W)) *
                              ((M + kDecodeMR - 1) / kDecodeMR);  // weight bytes widened per group
  // Threads by size (kMinDecodeBytesPerThread each), but with the full machine in use the groups
  // go out in ~kChunksPerThread chunks per thread: at a 1 ms minimum per chunk, a 26 MB matrix
  // made 3 chunks for 2 threads, one thread streaming twice the other's share.
  const int64_t wanted = std::min<int64_t>(cg::NumThreads(), groups * group_bytes / kMinDecodeBytesPerThread);
  int64_t grain = groups;
  if (wanted > 1) grain = (groups + wanted - 1) / wanted;
  if (wanted > 1 && wanted >= cg::NumThreads()) grain = (groups + wanted * cg::kChunksPerThread - 1) / (wanted * cg::kChunksPerThread);
  cg::ParallelFor(groups, std::max<int64_t>(grain, 1), [&](int64_t b, int64_t e) {
    DecodeRows(x, w, scale, M, K, N, b * kDecodeGroup, std::min(N, e * kDecodeGroup), acc);
  });
  if (!std::is_same<X, float>::value) cg::FloatToHalf(acc, reinterpret_cast<half_t *>(y), M * N);
}

// ================================================================================ GEMM path

// c[r * ldc + j] (+)= sum_{k < kc} a[r * kKC + k] * b[k * kPanel + j] for r < kMR, j < kPanel.
inline void MicroKernel(const float *a, const float *b, int64_t kc, float *c, int64_t ldc, bool accumulate) {
  V acc[kMR][2];
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r) {
    acc[r][0] = accumulate ? w8::Load(c + r * ldc) : w8::Zero();
    acc[r][1] = accumulate ? w8::Load(c + r * ldc + kLanes) : w8::Zero();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const V b0 = w8::Load(b + k * kPanel);
    const V b1 = w8::Load(b + k * kPanel + kLanes);
#pragma GCC unroll 16
    for (int r = 0; r < kMR; ++r) {
      const V ar = w8::Broadcast(a + r * kKC + k);
      acc[r][0] = w8::Fma(ar, b0, acc[r][0]);
      acc[r][1] = w8::Fma(ar, b1, acc[r][1]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r) {
    w8::Store(c + r * ldc, acc[r][0]);
    w8::Store(c + r * ldc + kLanes, acc[r][1]);
  }
}

// xp [panels][K][kPanel] = xᵀ by panels of kPanel rows, zero-padded past row M.
template <typename X>
void PackX(const X *x, int64_t M, int64_t K, int64_t pb, int64_t pe, float *xp) {
  std::vector<float> row(static_cast<size_t>(K));
  for (int64_t p = pb; p < pe; ++p) {
    float *dst = xp + p * K * kPanel;
    for (int64_t j = 0; j < kPanel; ++j) {
      const int64_t m = p * kPanel + j;
      if (m < M) {
        const float *src = cg::AsFloat(x + m * K, row.data(), K);
        for (int64_t k = 0; k < K; ++k) dst[k * kPanel + j] = src[k];
      } else {
        for (int64_t k = 0; k < K; ++k) dst[k * kPanel + j] = 0.0f;
      }
    }
  }
}

// One task: weight rows [nb, ne) (<= kMC) against x rows [mb, me) (<= kNC, mb a panel start).
template <typename X, typename W>
void GemmTask(const float *xp, const W *w, const float *scale, int64_t K, int64_t N, int64_t nb,
              int64_t ne, int64_t mb, int64_t me, X *y) {
  const int64_t rows = ne - nb;
  const int64_t rows_pad = (rows + kMR - 1) / kMR * kMR;
  const int64_t panels = (me - mb + kPanel - 1) / kPanel;
  const int64_t ldc = panels * kPanel;
  float *a = cg::Scratch(static_cast<size_t>(kMC * kKC + kMC * kNC));
  float *c = a + kMC * kKC;
  if (rows_pad > rows) std::memset(a + rows * kKC, 0, sizeof(float) * kKC * (rows_pad - rows));
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kc = std::min(kKC, K - k0);
    for (int64_t r = 0; r < rows; ++r) w8::WidenRow(w + (nb + r) * K + k0, a + r * kKC, kc);
    for (int64_t p = 0; p < panels; ++p) {
      const float *b = xp + (mb / kPanel + p) * K * kPanel + k0 * kPanel;
      for (int64_t r = 0; r < rows_pad; r += kMR) MicroKernel(a + r * kKC, b, kc, c + r * ldc + p * kPanel, ldc, k0 > 0);
    }
  }
  for (int64_t m = mb; m < me; ++m) {
    X *dst = y + m * N + nb;
    const float *src = c + (m - mb);
    if (scale != nullptr) {
      for (int64_t r = 0; r < rows; ++r) Put(src[r * ldc] * scale[nb + r], dst + r);
    } else {
      for (int64_t r = 0; r < rows; ++r) Put(src[r * ldc], dst + r);
    }
  }
}

template <typename X, typename W>
void Gemm(const X *x, const W *w, const float *scale, int64_t M, int64_t K, int64_t N, X *y) {
  const int64_t panels = (M + kPanel - 1) / kPanel;
  std::vector<float> xp(static_cast<size_t>(panels * K * kPanel));
  cg::ParallelFor(panels, std::max<int64_t>(1, (1 << 20) / (K * kPanel)),
                  [&](int64_t b, int64_t e) { PackX(x, M, K, b, e, xp.data()); });
  const int64_t nblocks = (N + kMC - 1) / kMC, mblocks = (M + kNC - 1) / kNC;
  const int64_t task_macs = std::min(kMC, N) * K * std::min(kNC, M);
  cg::ParallelFor(nblocks * mblocks, (kMinGemmMacsPerThread + task_macs - 1) / task_macs, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t nb = (t / mblocks) * kMC, mb = (t % mblocks) * kNC;
      GemmTask(xp.data(), w, scale, K, N, nb, std::min(N, nb + kMC), mb, std::min(M, mb + kNC), y);
    }
  });
}

// ================================================================================ entry points

template <typename W>
int Run(cg::DType xt, void *x, const W *w, const float *scale, int64_t M, int64_t K, int64_t N, void *y) {
  if (M == 0 || N == 0) return cg::kOk;
  if (K == 0) {
    std::memset(y, 0, static_cast<size_t>(M * N) * (xt == cg::DType::kF32 ? sizeof(float) : sizeof(half_t)));
    return cg::kOk;
  }
  if (xt == cg::DType::kF32) {
    (M < kGemmMinM ? Decode<float, W> : Gemm<float, W>)(static_cast<const float *>(x), w, scale, M, K, N,
                                                         static_cast<float *>(y));
  } else {
    (M < kGemmMinM ? Decode<half_t, W> : Gemm<half_t, W>)(static_cast<const half_t *>(x), w, scale, M, K, N,
                                                           static_cast<half_t *>(y));
  }
  return cg::kOk;
}

bool IsInt8(const char *name) { return std::strcmp(name, "int8") == 0; }

// Checks x [M, K], w [N, K], y [M, N] (indices ix, iw, iy) and x / y dtypes; sets M, K, N.
int CheckMatmul(int ix, int iw, int iy, int *ndims, int64_t **shapes, const char **dtypes, cg::DType *xt,
                int64_t *M, int64_t *K, int64_t *N) {
  *xt = cg::ParseDType(dtypes[ix]);
  if ((*xt != cg::DType::kF32 && *xt != cg::DType::kF16) || cg::ParseDType(dtypes[iy]) != *xt) return cg::kBadDType;
  if (ndims[ix] != 2 || ndims[iw] != 2 || ndims[iy] != 2) return cg::kBadShape;
  *M = shapes[ix][0];
  *K = shapes[ix][1];
  *N = shapes[iw][0];
  if (shapes[iw][1] != *K || shapes[iy][0] != *M || shapes[iy][1] != *N) return cg::kBadShape;
  return cg::kOk;
}

}  // namespace

extern "C" int W8A16MatMul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 4) return cg::kBadArity;
  cg::DType xt;
  int64_t M, K, N;
  if (!IsInt8(dtypes[1]) || cg::ParseDType(dtypes[2]) != cg::DType::kF32) return cg::kBadDType;
  const int status = CheckMatmul(0, 1, 3, ndims, shapes, dtypes, &xt, &M, &K, &N);
  if (status != cg::kOk) return status;
  if (ndims[2] != 1 || shapes[2][0] != N) return cg::kBadShape;
  return Run(xt, params[0], static_cast<const int8_t *>(params[1]), static_cast<const float *>(params[2]), M, K, N,
             params[3]);
}

extern "C" int FloatWMatMul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                          void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 3) return cg::kBadArity;
  cg::DType xt;
  int64_t M, K, N;
  const cg::DType wt = cg::ParseDType(dtypes[1]);
  if (wt != cg::DType::kF16 && wt != cg::DType::kF32) return cg::kBadDType;
  const int status = CheckMatmul(0, 1, 2, ndims, shapes, dtypes, &xt, &M, &K, &N);
  if (status != cg::kOk) return status;
  if (wt == cg::DType::kF32) return Run(xt, params[0], static_cast<const float *>(params[1]), nullptr, M, K, N, params[2]);
  return Run(xt, params[0], static_cast<const half_t *>(params[1]), nullptr, M, K, N, params[2]);
}

// The ISA the library was compiled for ("avx512", "avx2" or "scalar"), for benchmarks and logs.
extern "C" const char *W8A16Isa() { return w8::kIsa; }
