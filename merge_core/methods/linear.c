/* The four linear merge modes fused with decoding the stored inputs and encoding the output.

   Why: on fp8 files torch needs a float32 copy of every operand, one pass per operation and a
   clamp before the cast back; most of a full-size fp8 Flux merge went there. Here each block of
   BLOCK values is decoded into float32 on the stack, merged, and encoded, in one pass.

   The values are torch's, bit for bit (tests/unit/test_fused_linear.py compares every mode and
   dtype pair against the torch path):
   - decoding is exact (every stored value is a float32);
   - the formulas use torch's CPU kernels' operations in their order: lerp is
     fma(w', end - start, base) with (w', base) = (w, start) when |w| < 0.5 and (w - 1, end) when
     not; add with alpha is fma(other, alpha, self); weights are rounded to float32 as torch does;
   - encoding rounds to nearest even; fp8 saturates (values beyond the format's largest finite one
     become it, as clamp-then-cast does); NaN stays NaN (its sign and payload are not promised).
   Each input's count of NaN/inf values comes back in counts[], so the caller need not scan them.

   Plain C, no Python or torch headers. Compiled with -ffp-contract=off so that no a*b+c is fused
   behind our back; fmaf is the only fused operation. */
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { F32 = 0, F16 = 1, BF16 = 2, E4M3 = 3, E5M2 = 4 };
enum { WEIGHT_SUM = 0, ADD_DIFFERENCE = 1, TRIPLE_SUM = 2, SUM_TWICE = 3 };
#define BLOCK 1024

static inline float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* float32 bits of the float16 with bits h (exact; subnormals as mantissa * 2^-24) */
static inline __attribute__((always_inline)) uint32_t half_bits(uint32_t h) {
    uint32_t sign = (h & 0x8000u) << 16, em = h & 0x7FFFu;
    uint32_t normal = (em << 13) + ((127u - 15u) << 23);
    uint32_t tiny = to_bits((float)(int32_t)em * 0x1p-24f);
    uint32_t special = 0x7F800000u | ((em & 0x3FFu) << 13) | (em > 0x7C00u ? 0x00400000u : 0u);
    uint32_t finite = em < 0x400u ? tiny : normal;
    return (em < 0x7C00u ? finite : special) | sign;
}

static inline __attribute__((always_inline)) int half_special(uint32_t h) { return (h & 0x7C00u) == 0x7C00u; }

/* ---- decoding: n stored values to float32, returning how many were NaN/inf ---- */

static inline __attribute__((always_inline)) int64_t decode(const void *src, int kind, int n, float *dst) {
    uint32_t bad = 0;  /* 32 bits: a 64-bit sum of byte-wide tests vectorises poorly */
    if (kind == F32) {
        const uint32_t *p = (const uint32_t *)src;
        for (int i = 0; i < n; i++) {
            uint32_t u = p[i];
            bad += (u & 0x7F800000u) == 0x7F800000u;
            dst[i] = from_bits(u);
        }
    } else if (kind == BF16) {
        const uint16_t *p = (const uint16_t *)src;
        for (int i = 0; i < n; i++) {
            uint32_t h = p[i];
            bad += (h & 0x7F80u) == 0x7F80u;
            dst[i] = from_bits(h << 16);
        }
    } else if (kind == F16) {
        const uint16_t *p = (const uint16_t *)src;
        for (int i = 0; i < n; i++) {
            uint32_t h = p[i];
            bad += half_special(h);
            dst[i] = from_bits(half_bits(h));
        }
    } else if (kind == E5M2) {  /* the upper byte of a float16 */
        const uint8_t *p = (const uint8_t *)src;
        for (int i = 0; i < n; i++) {
            uint32_t h = (uint32_t)p[i] << 8;
            bad += half_special(h);
            dst[i] = from_bits(half_bits(h));
        }
    } else {  /* E4M3: bias 7, no infinity, S1111111 is NaN */
        const uint8_t *p = (const uint8_t *)src;
        for (int i = 0; i < n; i++) {
            uint32_t x = p[i];
            uint32_t sign = (x & 0x80u) << 24, em = x & 0x7Fu;
            uint32_t normal = (em << 20) + (120u << 23);
            uint32_t tiny = to_bits((float)(int32_t)em * 0x1p-9f);
            uint32_t mag = em < 8u ? tiny : (em == 0x7Fu ? 0x7FC00000u : normal);
            bad += em == 0x7Fu;
            dst[i] = from_bits(mag | sign);
        }
    }
    return bad;
}

/* ---- encoding: n float32 values to the output kind, rounding to nearest even ---- */

/* Round |x| (bits a, finite, below the format's overflow) to a format with `mant` mantissa bits,
   exponent bias `bias` and smallest normal exponent `min_exp`: subnormals by adding a power of two
   whose float32 spacing is the format's subnormal step, normals by the round-half-even carry.
   Both are computed and one is selected, so that the loops have no branch and vectorise. */
static inline __attribute__((always_inline)) uint32_t round_to(uint32_t a, int mant, int bias, int min_exp) {
    uint32_t magic = (uint32_t)(127 + min_exp - mant + 23) << 23;
    uint32_t tiny = to_bits(from_bits(a) + from_bits(magic)) - magic;
    uint32_t normal = (a - ((uint32_t)(127 - bias) << 23) + ((1u << (22 - mant)) - 1u) + ((a >> (23 - mant)) & 1u))
                      >> (23 - mant);
    return a < ((uint32_t)(127 + min_exp) << 23) ? tiny : normal;
}

/* One fp8 code: round_to with saturation (|x| above max_bits becomes max_code) and NaN as 0x7F, signed. */
static inline __attribute__((always_inline)) uint8_t fp8_code(float v, int mant, int bias, int min_exp,
                                                               uint32_t max_bits, uint32_t max_code) {
    uint32_t u = to_bits(v), sign = u & 0x80000000u, a = u ^ sign;
    uint32_t r = round_to(a, mant, bias, min_exp);
    r = a > max_bits ? max_code : r;
    r = a > 0x7F800000u ? 0x7Fu : r;
    return (uint8_t)(r | (sign >> 24));
}

static inline __attribute__((always_inline)) void encode(const float *src, int kind, int n, void *dst) {
    if (kind == F32) {
        memcpy(dst, src, (size_t)n * 4);
    } else if (kind == BF16) {
        uint16_t *p = (uint16_t *)dst;
        for (int i = 0; i < n; i++) {
            uint32_t u = to_bits(src[i]);
            uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
            p[i] = (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : r);
        }
    } else if (kind == F16) {
        uint16_t *p = (uint16_t *)dst;
        for (int i = 0; i < n; i++) {
            uint32_t u = to_bits(src[i]), sign = u & 0x80000000u, a = u ^ sign;
            uint32_t r = round_to(a, 10, 15, -14);
            r = a >= 0x477FF000u ? 0x7C00u : r;  /* from 65520 up: infinity */
            r = a > 0x7F800000u ? 0x7E00u : r;
            p[i] = (uint16_t)(r | (sign >> 16));
        }
    } else {  /* fp8: beyond the largest finite value (448, 57344) saturate to it */
        uint8_t *p = (uint8_t *)dst;
        if (kind == E4M3)
            for (int i = 0; i < n; i++)
                p[i] = fp8_code(src[i], 3, 7, -6, 0x43E00000u, 0x7Eu);
        else
            for (int i = 0; i < n; i++)
                p[i] = fp8_code(src[i], 2, 15, -14, 0x47600000u, 0x7Bu);
    }
}

/* ---- the formulas, as torch's vectorised CPU kernels compute them ---- */

static inline __attribute__((always_inline)) void lerp(const float *s, const float *e, float w, int n, float *out) {
    int small = fabsf(w) < 0.5f;
    float coeff = small ? w : w - 1.0f;
    const float *base = small ? s : e;
    for (int i = 0; i < n; i++)
        out[i] = fmaf(coeff, e[i] - s[i], base[i]);
}

static inline __attribute__((always_inline)) void formula(int mode, double alpha, double beta, const float *a,
                                                          const float *b, const float *c, int n, float *out) {
    float fa = (float)alpha, fb = (float)beta;
    if (mode == WEIGHT_SUM) {
        lerp(a, b, fa, n, out);
    } else if (mode == ADD_DIFFERENCE) {
        for (int i = 0; i < n; i++)
            out[i] = fmaf(b[i] - c[i], fa, a[i]);
    } else if (mode == TRIPLE_SUM) {
        float keep = (float)(1.0 - alpha - beta);  /* Python's double arithmetic, then torch's cast */
        for (int i = 0; i < n; i++)
            out[i] = fmaf(c[i], fb, fmaf(b[i], fa, a[i] * keep));
    } else {
        lerp(a, b, fa, n, out);
        lerp(out, c, fb, n, out);  /* in place: every value reads only its own position */
    }
}

/* A stored per-tensor scale applied to n decoded values (torch's widen(x) * scale: one float32 multiply);
   returns how many of the products are NaN/inf (a finite value times a large scale may overflow). */
static inline __attribute__((always_inline)) int64_t apply_scale(float *x, int n, float scale) {
    uint32_t bad = 0;
    for (int i = 0; i < n; i++) {
        float v = x[i] * scale;
        bad += (to_bits(v) & 0x7F800000u) == 0x7F800000u;
        x[i] = v;
    }
    return bad;
}

/* One input's block: decoded, scaled when its scale is not 1, its NaN/inf values counted. */
#define DECODE_INPUT(decode_fn, src, kind, scale, dst, count)                                          \
    {                                                                                                  \
        int64_t bad = decode_fn(src, kind, n, dst);                                                    \
        count += scale == 1.0f ? bad : apply_scale(dst, n, scale);                                     \
    }

#define RUN(decode_fn, encode_fn)                                                                      \
    static const int size[] = {4, 2, 2, 1, 1};                                                         \
    float fa[BLOCK], fb[BLOCK], fc[BLOCK], fo[BLOCK];                                                  \
    float sa = scales ? scales[0] : 1.0f, sb = scales ? scales[1] : 1.0f, sc = scales ? scales[2] : 1.0f; \
    for (int64_t start = first; start < last; start += BLOCK) {                                        \
        int n = last - start < BLOCK ? (int)(last - start) : BLOCK;                                    \
        DECODE_INPUT(decode_fn, (const char *)a + start * size[ka], ka, sa, fa, counts[0]);            \
        DECODE_INPUT(decode_fn, (const char *)b + start * size[kb], kb, sb, fb, counts[1]);            \
        if (c != 0)                                                                                    \
            DECODE_INPUT(decode_fn, (const char *)c + start * size[kc], kc, sc, fc, counts[2]);        \
        formula(mode, alpha, beta, fa, fb, fc, n, fo);                                                 \
        if (amax != 0) {                                                                               \
            *amax = block_abs_max(fo, n, *amax);                                                       \
            continue;                                                                                  \
        }                                                                                              \
        if (divisor != 1.0f)                                                                           \
            for (int i = 0; i < n; i++)                                                                \
                fo[i] = fo[i] / divisor;                                                               \
        encode_fn(fo, kout, n, (char *)out + start * size[kout]);                                      \
    }

/* The bits of max(|x|) over n values and the bits `top` (a NaN's bits exceed every other's). */
static inline __attribute__((always_inline)) uint32_t block_abs_max(const float *x, int n, uint32_t top) {
    for (int i = 0; i < n; i++) {
        uint32_t u = to_bits(x[i]) & 0x7FFFFFFFu;
        top = u > top ? u : top;
    }
    return top;
}

/* scales: the three inputs' per-tensor float32 scales (NULL: none, every value as stored);
   divisor: each merged value is divided by it before encoding (a scaled fp8 output's scale; 1: none);
   amax: when not NULL, nothing is written: the bits of max |merged value| are accumulated into *amax */
#define ARGS int mode, double alpha, double beta, const void *a, int ka, const void *b, int kb, const void *c, \
             int kc, void *out, int kout, int64_t first, int64_t last, int64_t *counts, const float *scales,      \
             float divisor, uint32_t *amax

static void run_plain(ARGS) { RUN(decode, encode) }

/* ---- a scaled fp8 output (io/precision.py quantize_scaled): max |x|, then x / scale encoded ---- */

/* The bits of the largest |x| of n float32 values: for non-negative floats the order of the bits is the
   order of the values, and a NaN's bits exceed infinity's, so any NaN shows as a result above 0x7F800000. */
#define ABS_MAX_BITS                                                                                   \
    uint32_t top = 0;                                                                                  \
    const uint32_t *p = (const uint32_t *)src;                                                         \
    for (int64_t i = 0; i < n; i++) {                                                                  \
        uint32_t u = p[i] & 0x7FFFFFFFu;                                                               \
        top = u > top ? u : top;                                                                       \
    }                                                                                                  \
    return top;

/* x / scale (one float32 division, as torch's t / scale) encoded to kout, BLOCK values at a time. */
#define ENCODE_DIVIDED(encode_fn)                                                                      \
    static const int size[] = {4, 2, 2, 1, 1};                                                         \
    float q[BLOCK];                                                                                    \
    for (int64_t start = 0; start < n; start += BLOCK) {                                               \
        int m = n - start < BLOCK ? (int)(n - start) : BLOCK;                                          \
        for (int i = 0; i < m; i++)                                                                    \
            q[i] = src[start + i] / scale;                                                             \
        encode_fn(q, kout, m, (char *)dst + start * size[kout]);                                       \
    }

static uint32_t abs_max_plain(const float *src, int64_t n) { ABS_MAX_BITS }
static void divided_plain(const float *src, int64_t n, float scale, int kout, void *dst) { ENCODE_DIVIDED(encode) }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2 1
#define AVX2 __attribute__((target("avx2,fma,f16c")))

/* The same conversions written with AVX2/F16C instructions (GCC's own vectorisation of the loops
   above ran at 0.6-0.8 ns per value here, these at 0.1-0.3); the last values of a block that do
   not fill a vector go through the plain loops. */

static inline AVX2 __m256i nan_count_bytes(__m256i bad, __m256i bytes, __m256i mask) {
    return _mm256_sub_epi8(bad, _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask));
}

static inline AVX2 uint32_t sum_bytes(__m256i v) {
    __m256i s = _mm256_sad_epu8(v, _mm256_setzero_si256());
    return (uint32_t)(_mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) + _mm256_extract_epi64(s, 2) +
                      _mm256_extract_epi64(s, 3));
}

static AVX2 int64_t decode_avx2(const void *src, int kind, int n, float *dst) {
    int i = 0;
    uint32_t bad = 0;
    if (kind == E4M3 || kind == E5M2) {  /* 32 bytes a step; at most BLOCK/32 steps, so byte counters hold */
        const uint8_t *p = (const uint8_t *)src;
        const __m256i mask = _mm256_set1_epi8(kind == E4M3 ? 0x7F : 0x7C);
        const __m128i drop = _mm_set1_epi16((short)0xBFFF);  /* the sign copy that lands in bit 14 */
        const __m256 scale = _mm256_set1_ps(256.0f);
        __m256i counter = _mm256_setzero_si256();
        for (; i + 32 <= n; i += 32) {
            __m256i bytes = _mm256_loadu_si256((const __m256i *)(p + i));
            counter = nan_count_bytes(counter, bytes, mask);
            for (int j = 0; j < 32; j += 8) {
                __m128i b8 = _mm_loadl_epi64((const __m128i *)(p + i + j));
                __m256 f;
                if (kind == E5M2) {  /* the upper byte of a float16 */
                    f = _mm256_cvtph_ps(_mm_unpacklo_epi8(_mm_setzero_si128(), b8));
                } else {  /* S0EEEEMMM0000000 as a float16 is the value times 2^-8, subnormals included */
                    __m128i h = _mm_and_si128(_mm_slli_epi16(_mm_cvtepi8_epi16(b8), 7), drop);
                    f = _mm256_mul_ps(_mm256_cvtph_ps(h), scale);
                }
                _mm256_storeu_ps(dst + i + j, f);
            }
        }
        bad = sum_bytes(counter);
        if (kind == E4M3 && bad)  /* NaN came out as +-480: written again by the plain loop */
            decode(p, kind, i, dst);
    } else if (kind == F16) {
        const uint16_t *p = (const uint16_t *)src;
        const __m128i inf = _mm_set1_epi16(0x7C00);
        for (; i + 8 <= n; i += 8) {
            __m128i h = _mm_loadu_si128((const __m128i *)(p + i));
            bad += __builtin_popcount(_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(h, inf), inf))) / 2;
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
        }
    } else if (kind == BF16) {
        const uint16_t *p = (const uint16_t *)src;
        const __m128i inf = _mm_set1_epi16(0x7F80);
        for (; i + 8 <= n; i += 8) {
            __m128i h = _mm_loadu_si128((const __m128i *)(p + i));
            bad += __builtin_popcount(_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(h, inf), inf))) / 2;
            _mm256_storeu_si256((__m256i *)(dst + i), _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        }
    } else {
        const uint32_t *p = (const uint32_t *)src;
        const __m256i inf = _mm256_set1_epi32(0x7F800000);
        for (; i + 8 <= n; i += 8) {
            __m256i u = _mm256_loadu_si256((const __m256i *)(p + i));
            bad += __builtin_popcount(_mm256_movemask_ps(
                _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(u, inf), inf))));
            _mm256_storeu_si256((__m256i *)(dst + i), u);
        }
    }
    static const int size[] = {4, 2, 2, 1, 1};
    return bad + (i < n ? decode((const char *)src + (size_t)i * size[kind], kind, n - i, dst + i) : 0);
}

/* round_to on 8 lanes, with the saturation and NaN of the fp8 kinds */
static inline AVX2 __m256i fp8_lanes(__m256 v, int mant, int bias, int min_exp, uint32_t max_bits, uint32_t max_code) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i sign = _mm256_and_si256(u, _mm256_set1_epi32((int)0x80000000u));
    const __m256i a = _mm256_xor_si256(u, sign);
    const __m256i magic = _mm256_set1_epi32((int)((uint32_t)(127 + min_exp - mant + 23) << 23));
    __m256i tiny = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a),
                                                                      _mm256_castsi256_ps(magic))), magic);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(a, 23 - mant), _mm256_set1_epi32(1));
    __m256i normal = _mm256_add_epi32(a, _mm256_set1_epi32((int)(((1u << (22 - mant)) - 1u) -
                                                                  ((uint32_t)(127 - bias) << 23))));
    normal = _mm256_srli_epi32(_mm256_add_epi32(normal, odd), 23 - mant);
    __m256i small = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)((uint32_t)(127 + min_exp) << 23)), a);
    __m256i r = _mm256_blendv_epi8(normal, tiny, small);
    __m256i beyond = _mm256_cmpgt_epi32(a, _mm256_set1_epi32((int)max_bits));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32((int)max_code), beyond);
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7F), _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7F800000)));
    return _mm256_or_si256(r, _mm256_srli_epi32(sign, 24));
}

static AVX2 void encode_avx2(const float *src, int kind, int n, void *dst) {
    int i = 0;
    if (kind == E4M3 || kind == E5M2) {
        uint8_t *p = (uint8_t *)dst;
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (; i + 32 <= n; i += 32) {
            __m256i r[4];
            for (int j = 0; j < 4; j++) {
                __m256 v = _mm256_loadu_ps(src + i + 8 * j);
                r[j] = kind == E4M3 ? fp8_lanes(v, 3, 7, -6, 0x43E00000u, 0x7Eu)
                                    : fp8_lanes(v, 2, 15, -14, 0x47600000u, 0x7Bu);
            }
            __m256i words = _mm256_packus_epi16(_mm256_packus_epi32(r[0], r[1]), _mm256_packus_epi32(r[2], r[3]));
            _mm256_storeu_si256((__m256i *)(p + i), _mm256_permutevar8x32_epi32(words, order));
        }
    } else if (kind == F16) {
        uint16_t *p = (uint16_t *)dst;
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(p + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    } else if (kind == BF16) {
        uint16_t *p = (uint16_t *)dst;
        const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF);
        for (; i + 16 <= n; i += 16) {
            __m256i r[2];
            for (int j = 0; j < 2; j++) {
                __m256 v = _mm256_loadu_ps(src + i + 8 * j);
                __m256i u = _mm256_castps_si256(v);
                __m256i rounded = _mm256_srli_epi32(
                    _mm256_add_epi32(_mm256_add_epi32(u, bias), _mm256_and_si256(_mm256_srli_epi32(u, 16), one)), 16);
                __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                r[j] = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
            }
            _mm256_storeu_si256((__m256i *)(p + i), _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xD8));
        }
    }
    static const int size[] = {4, 2, 2, 1, 1};
    if (i < n)
        encode(src + i, kind, n - i, (char *)dst + (size_t)i * size[kind]);
}

static AVX2 void run_avx2(ARGS) { RUN(decode_avx2, encode_avx2) }
static AVX2 uint32_t abs_max_avx2(const float *src, int64_t n) { ABS_MAX_BITS }
static AVX2 void divided_avx2(const float *src, int64_t n, float scale, int kout, void *dst) {
    ENCODE_DIVIDED(encode_avx2)
}
#endif

static int valid(int mode, int ka, int kb, const void *c, int kc, int kout) {
    return mode >= WEIGHT_SUM && mode <= SUM_TWICE && ka >= F32 && ka <= E5M2 && kb >= F32 && kb <= E5M2 &&
           kout >= F32 && kout <= E5M2 && (mode == WEIGHT_SUM || (c != 0 && kc >= F32 && kc <= E5M2));
}

/* Merge values [first, last) of one key. a, b, c, out: the whole stored tensors (c NULL for the
   two-model modes); k*: their kinds (F32 ... E5M2); counts: three int64 NaN/inf counts, added to;
   scales: each input's per-tensor scale (NULL for none).
   Returns 0, or -1 for an unknown mode or kind. */
int merge_linear(ARGS) {
    if (!valid(mode, ka, kb, c, kc, kout))
        return -1;
    if (mode == WEIGHT_SUM)
        c = 0;
#ifdef HAVE_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        run_avx2(mode, alpha, beta, a, ka, b, kb, c, kc, out, kout, first, last, counts, scales, divisor, amax);
        return 0;
    }
#endif
    run_plain(mode, alpha, beta, a, ka, b, kb, c, kc, out, kout, first, last, counts, scales, divisor, amax);
    return 0;
}

/* The same with the portable loops only (what CPUs without AVX2 run), for the tests. */
int merge_linear_portable(ARGS) {
    if (!valid(mode, ka, kb, c, kc, kout))
        return -1;
    run_plain(mode, alpha, beta, a, ka, b, kb, c, kc, out, kout, first, last, counts, scales, divisor, amax);
    return 0;
}

static int have_avx2(void) {
#ifdef HAVE_AVX2
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

/* The bits of max |src[i]| over n float32 values (above 0x7F800000: a NaN among them). portable: the plain
   loop only. */
uint32_t abs_max_bits(const float *src, int64_t n, int portable) {
#ifdef HAVE_AVX2
    if (!portable && have_avx2())
        return abs_max_avx2(src, n);
#endif
    return abs_max_plain(src, n);
}

/* dst = src / scale encoded to kout (fp8 saturating as clamp-then-cast does), n values; -1 for an unknown kind. */
int encode_divided(const float *src, int64_t n, float scale, int kout, void *dst, int portable) {
    if (kout < F32 || kout > E5M2)
        return -1;
#ifdef HAVE_AVX2
    if (!portable && have_avx2()) {
        divided_avx2(src, n, scale, kout, dst);
        return 0;
    }
#endif
    divided_plain(src, n, scale, kout, dst);
    return 0;
}
