/* Exact median over the 3x3x3x3 neighbourhood of a float32 array shaped (n0, n1, n2, n3)
 * with n2, n3 <= 3 (conv kernels), SciPy "reflect" boundaries (index -1 -> 0, n -> n-1):
 * the same values as scipy.ndimage.median_filter(x, size=3).
 *
 * Why not select from 81 values per element: the n2*n3 outputs at one (a, b) all draw
 * on the same 81 values, x[a-1..a+1, b-1..b+1, :, :], only with different
 * multiplicities (reflection repeats border slices). So, per (a, b): sort those values
 * once, each tagged with its (c, d) slice, then find every output's median by walking
 * the sorted list and adding the tag's multiplicity until the count reaches 41.
 * Sorting is shared too: columns along axis 0 are sorted once per element, merged over
 * axis 1 into runs of 9, then over the kernel slices. Values are compared as
 * order-preserving unsigned keys (so -0.0 sorts below +0.0, which SciPy treats as
 * equal: the result differs at most in the sign of a zero); NaN must not occur. Merges
 * are branch-free and run LANES outputs in lockstep so their dependency chains overlap.
 * Rows [a_begin, a_end) let the caller split the work across threads.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 4

static inline int64_t refl(int64_t i, int64_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

static inline uint32_t key_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u ^ (uint32_t)(((int32_t)u >> 31) | (int32_t)0x80000000);
}

static inline float value_of(uint32_t k) {
    uint32_t u = (k & 0x80000000u) ? (k ^ 0x80000000u) : ~k;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* One step of a branch-free 3-way merge of sorted runs that end in a max-value sentinel. */
#define STEP(T, P, Q, R, V)                                \
    do {                                                   \
        T a_ = *P, b_ = *Q, c_ = *R;                       \
        int bc_ = b_ <= c_;                                \
        T m_ = bc_ ? b_ : c_;                              \
        int ia_ = a_ <= m_;                                \
        V = ia_ ? a_ : m_;                                 \
        P += ia_; Q += (!ia_) & bc_; R += (!ia_) & (!bc_); \
    } while (0)

/* Merge, for each of LANES independent lanes, three sorted runs into out[lane][0..count). */
#define DEFINE_MERGE(NAME, T)                                                                        \
    static inline void NAME(const T *p[LANES], const T *q[LANES], const T *r[LANES], int count,     \
                            T *out[LANES]) {                                                         \
        const T *p0 = p[0], *q0 = q[0], *r0 = r[0], *p1 = p[1], *q1 = q[1], *r1 = r[1];              \
        const T *p2 = p[2], *q2 = q[2], *r2 = r[2], *p3 = p[3], *q3 = q[3], *r3 = r[3];              \
        T *o0 = out[0], *o1 = out[1], *o2 = out[2], *o3 = out[3], v0, v1, v2, v3;                    \
        for (int s = 0; s < count; s++) {                                                            \
            STEP(T, p0, q0, r0, v0); STEP(T, p1, q1, r1, v1);                                        \
            STEP(T, p2, q2, r2, v2); STEP(T, p3, q3, r3, v3);                                        \
            o0[s] = v0; o1[s] = v1; o2[s] = v2; o3[s] = v3;                                          \
        }                                                                                            \
    }
DEFINE_MERGE(merge3_u32, uint32_t)
DEFINE_MERGE(merge3_u64, uint64_t)

static const uint64_t EMPTY64[1] = {UINT64_MAX};

int median3_kernel4d(const float *x, float *out, int64_t n0, int64_t n1, int64_t n2, int64_t n3,
                     int64_t a_begin, int64_t a_end) {
    if (n2 < 1 || n2 > 3 || n3 < 1 || n3 > 3) return -2;
    const int64_t slices = n2 * n3, plane = n1 * slices;
    uint32_t *t1 = malloc(sizeof(uint32_t) * plane * 4);           /* sorted columns along axis 0 */
    uint32_t *t2 = malloc(sizeof(uint32_t) * plane * 10);          /* runs of 9 over axes 0 and 1 */
    uint64_t *tagged = malloc(sizeof(uint64_t) * LANES * 9 * 10);  /* a run of 9 per slice, tagged */
    uint64_t *half = malloc(sizeof(uint64_t) * LANES * 3 * 28);    /* merged over axis 3, per c */
    uint64_t *full = malloc(sizeof(uint64_t) * LANES * 82);        /* all 81 values, sorted */
    int16_t weight[9][16];              /* [source slice][output slice], padded for vector code */
    memset(weight, 0, sizeof weight);
    if (!t1 || !t2 || !tagged || !half || !full) {
        free(t1); free(t2); free(tagged); free(half); free(full);
        return -1;
    }
    for (int64_t c = 0; c < n2; c++)
        for (int64_t d = 0; d < n3; d++)
            for (int64_t cs = 0; cs < n2; cs++)
                for (int64_t ds = 0; ds < n3; ds++) {
                    int mc = (refl(c - 1, n2) == cs) + (c == cs) + (refl(c + 1, n2) == cs);
                    int md = (refl(d - 1, n3) == ds) + (d == ds) + (refl(d + 1, n3) == ds);
                    weight[cs * n3 + ds][c * n3 + d] = (int16_t)(mc * md);
                }
    for (int64_t a = a_begin; a < a_end; a++) {
        const float *r0 = x + refl(a - 1, n0) * plane, *r1 = x + a * plane, *r2 = x + refl(a + 1, n0) * plane;
        for (int64_t i = 0; i < plane; i++) {
            uint32_t u = key_of(r0[i]), v = key_of(r1[i]), w = key_of(r2[i]);
            uint32_t lo = u < v ? u : v, hi = u < v ? v : u;
            uint32_t mid = lo < w ? w : lo;
            t1[4 * i] = lo < w ? lo : w;
            t1[4 * i + 1] = hi < mid ? hi : mid;
            t1[4 * i + 2] = hi < mid ? mid : hi;
            t1[4 * i + 3] = UINT32_MAX;
        }
        for (int64_t i0 = 0; i0 < plane; i0 += LANES) {  /* runs of 9: merge columns over axis 1 */
            const uint32_t *p[LANES], *q[LANES], *r[LANES];
            uint32_t *o[LANES];
            for (int l = 0; l < LANES; l++) {
                int64_t i = i0 + l < plane ? i0 + l : plane - 1, b = i / slices;
                p[l] = t1 + (i + (refl(b - 1, n1) - b) * slices) * 4;
                q[l] = t1 + i * 4;
                r[l] = t1 + (i + (refl(b + 1, n1) - b) * slices) * 4;
                o[l] = t2 + i * 10;
            }
            merge3_u32(p, q, r, 9, o);
            for (int l = 0; l < LANES; l++) o[l][9] = UINT32_MAX;
        }
        for (int64_t b0 = 0; b0 < n1; b0 += LANES) {
            const uint64_t *p[LANES], *q[LANES], *r[LANES];
            uint64_t *o[LANES];
            for (int l = 0; l < LANES; l++) {  /* tag every value with its slice */
                int64_t b = b0 + l < n1 ? b0 + l : n1 - 1;
                for (int s = 0; s < slices; s++) {
                    const uint32_t *run = t2 + (b * slices + s) * 10;
                    uint64_t *dst = tagged + (l * 9 + s) * 10;
                    for (int k = 0; k < 9; k++) dst[k] = ((uint64_t)run[k] << 8) | (uint64_t)s;
                    dst[9] = UINT64_MAX;
                }
            }
            for (int c = 0; c < n2; c++) {  /* merge the slices of each c over d */
                for (int l = 0; l < LANES; l++) {
                    const uint64_t *base = tagged + (l * 9 + c * n3) * 10;
                    p[l] = base;
                    q[l] = n3 > 1 ? base + 10 : EMPTY64;
                    r[l] = n3 > 2 ? base + 20 : EMPTY64;
                    o[l] = half + (l * 3 + c) * 28;
                }
                merge3_u64(p, q, r, 9 * (int)n3, o);
                for (int l = 0; l < LANES; l++) o[l][9 * n3] = UINT64_MAX;
            }
            for (int l = 0; l < LANES; l++) {
                p[l] = half + (l * 3) * 28;
                q[l] = n2 > 1 ? half + (l * 3 + 1) * 28 : EMPTY64;
                r[l] = n2 > 2 ? half + (l * 3 + 2) * 28 : EMPTY64;
                o[l] = full + l * 82;
            }
            merge3_u64(p, q, r, 9 * (int)slices, o);
            for (int l = 0; l < LANES && b0 + l < n1; l++) {
                /* weighted rank 41 for every slice at once, without branches: after adding
                 * element k's multiplicities, slice s is still below its median iff count < 41 */
                const uint64_t *sorted = full + l * 82;
                int16_t count[16] = {0}, below[16] = {0};
                for (int k = 0; k < 9 * slices; k++) {
                    const int16_t *w = weight[sorted[k] & 0xFF];
                    for (int s = 0; s < 16; s++) {
                        count[s] += w[s];
                        below[s] += count[s] < 41;
                    }
                }
                float *dst = out + a * plane + (b0 + l) * slices;
                for (int s = 0; s < slices; s++) dst[s] = value_of((uint32_t)(sorted[below[s]] >> 8));
            }
        }
    }
    free(t1); free(t2); free(tagged); free(half); free(full);
    return 0;
}
