/*
 * int8 dot products (AVX-512 VNNI) for the int8 and int4 formats, one token: llama.cpp's arithmetic
 * (activations rounded to int8 per block, integer dot products along the inputs) on actlab's sparse layout.
 * Included once by weights.c inside its x86 section; needs weights_kernel.h's avx512 instantiation.
 *
 * A block run's kept values x_k are rounded to qx_k = round(x_k / dx), dx = max|x_k| / 127 (a block holds
 * at most `group` consecutive inputs, so this is llama.cpp's Q8 activation block restricted to the kept
 * ones). Four kept rows at a time are interleaved byte-wise, so that every 32-bit lane holds one column's
 * four weights, and vpdpbusd adds the four products to that column's int32 sum. vpdpbusd multiplies
 * unsigned by signed bytes: int8 weights are biased by +128 (xor 0x80) and 128 * sum(qx) is taken off
 * at the end; int4 nibbles are unsigned already. The result: y[c] += s[c] dx sum_k qx_k q[k][c] (+ m[c]
 * dx sum_k qx_k for int4), the exact product of the rounded x with the format's w, so the rounding of x
 * adds at most dx / 2 * sum_k |w[k][c]| per block to y[c].
 *
 * Column order: an interleaved accumulator m (0..3) holds, in 128-bit lane L, columns 16 L + 4 m + j; a
 * 4x4 transpose of 128-bit lanes at the end gives 16 consecutive columns per vector (int4's nibble split
 * also swaps the middle two 16-column groups of every 64).
 */

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni,avx2,fma,f16c")))
#define VNNI_INLINE VNNI_TARGET static inline __attribute__((always_inline))
#ifndef VNNI_ROWS
#define VNNI_ROWS 16 /* kept rows per sweep over the columns */
#endif
#ifndef VNNI_AHEAD
#define VNNI_AHEAD 512 /* bytes */
#endif

/* 0 or 1: the int8-dot path is taken where the CPU has it (actlab_set_int8_dot). */
static int g_int8_dot = 1;

int actlab_set_int8_dot(int on) {
    const int old = g_int8_dot;
    if (on >= 0) g_int8_dot = on != 0;
    return old;
}

static int vnni_supported(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("f16c");
}

/* Four rows' 64 bytes each, interleaved: u[m] lane L = columns 16 L + 4 m + j, bytes rows 0..3. */
VNNI_INLINE void vnni_interleave(__m512i r0, __m512i r1, __m512i r2, __m512i r3, __m512i u[4]) {
    const __m512i ab_lo = _mm512_unpacklo_epi8(r0, r1), ab_hi = _mm512_unpackhi_epi8(r0, r1);
    const __m512i cd_lo = _mm512_unpacklo_epi8(r2, r3), cd_hi = _mm512_unpackhi_epi8(r2, r3);
    u[0] = _mm512_unpacklo_epi16(ab_lo, cd_lo);
    u[1] = _mm512_unpackhi_epi16(ab_lo, cd_lo);
    u[2] = _mm512_unpacklo_epi16(ab_hi, cd_hi);
    u[3] = _mm512_unpackhi_epi16(ab_hi, cd_hi);
}

/* 4x4 transpose of 128-bit lanes: y[L] = (a[0].L, a[1].L, a[2].L, a[3].L). */
VNNI_INLINE void vnni_unpermute(const __m512i a[4], __m512i y[4]) {
    const __m512i t0 = _mm512_shuffle_i32x4(a[0], a[1], 0x44), t1 = _mm512_shuffle_i32x4(a[0], a[1], 0xEE);
    const __m512i t2 = _mm512_shuffle_i32x4(a[2], a[3], 0x44), t3 = _mm512_shuffle_i32x4(a[2], a[3], 0xEE);
    y[0] = _mm512_shuffle_i32x4(t0, t2, 0x88);
    y[1] = _mm512_shuffle_i32x4(t0, t2, 0xDD);
    y[2] = _mm512_shuffle_i32x4(t1, t3, 0x88);
    y[3] = _mm512_shuffle_i32x4(t1, t3, 0xDD);
}

/* 64 columns of one row as bytes in interleave order: int8 biased to unsigned; int4 nibbles (lanes:
 * columns 0-15, 32-47, 16-31, 48-63). */
VNNI_INLINE __m512i vnni_row_q8(const int8_t *p) {
    return _mm512_xor_si512(_mm512_loadu_si512((const void *)p), _mm512_set1_epi8((char)0x80));
}
VNNI_INLINE __m512i vnni_row_q4(const uint8_t *p) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)p), m = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(v, m), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* One sweep of up to 8 kept rows [k, k + cnt) over the full 64-column chunks of [0, n64): first starts
 * from zero, otherwise from tmp; last folds into acc, otherwise stores to tmp. */
VNNI_INLINE void vnni_sweep(const void *base, int64_t ldb, const int q4, const int32_t *idx, const int8_t *qx,
                            int64_t k, int cnt, const int first, const int last, int64_t n64, int32_t *tmp,
                            const uint16_t *s, const uint16_t *mn, float dx, int32_t bias, float xsum,
                            float *acc) {
    const uint8_t *r[VNNI_ROWS];
    uint32_t packed[VNNI_ROWS / 4] = {0};
    for (int i = 0; i < VNNI_ROWS; ++i) {
        const int real = i < cnt;
        r[i] = (const uint8_t *)base + idx[real ? k + i : k] * ldb;
        if (real) packed[i / 4] |= (uint32_t)(uint8_t)qx[k + i] << (8 * (i % 4));
    }
    __m512i b[VNNI_ROWS / 4];
    for (int g = 0; g < VNNI_ROWS / 4; ++g) b[g] = _mm512_set1_epi32((int)packed[g]);
    const int groups = (cnt + 3) / 4;
    for (int64_t c = 0; c < n64; c += 64) {
        __m512i a[4];
        for (int m = 0; m < 4; ++m)
            a[m] = first ? _mm512_setzero_si512() : _mm512_loadu_si512((const void *)(tmp + c + 16 * m));
        const int64_t off = q4 ? c / 2 : c;
        /* a sweep reads up to 8 rows side by side, each a short run of bytes (its share of the columns):
         * too short for the hardware prefetchers to lock on, so ask for the bytes ahead explicitly */
        for (int i = 0; i < 4 * groups; ++i) _mm_prefetch((const char *)r[i] + off + VNNI_AHEAD, _MM_HINT_T0);
        __m512i u[4];
#define VNNI_ROW(i) (q4 ? vnni_row_q4(r[i] + off) : vnni_row_q8((const int8_t *)r[i] + off))
        for (int g = 0; g < groups; ++g) {
            vnni_interleave(VNNI_ROW(4 * g), VNNI_ROW(4 * g + 1), VNNI_ROW(4 * g + 2), VNNI_ROW(4 * g + 3), u);
            for (int m = 0; m < 4; ++m) a[m] = _mm512_dpbusd_epi32(a[m], u[m], b[g]);
        }
#undef VNNI_ROW
        if (!last) {
            for (int m = 0; m < 4; ++m) _mm512_storeu_si512((void *)(tmp + c + 16 * m), a[m]);
            continue;
        }
        __m512i y[4];
        vnni_unpermute(a, y);
        const __m512 vdx = _mm512_set1_ps(dx), vxs = _mm512_set1_ps(xsum);
        const __m512i vb = _mm512_set1_epi32(bias);
        for (int L = 0; L < 4; ++L) {
            /* int4's nibble split: lanes 1 and 2 hold columns 32-47 and 16-31 */
            const int64_t col = c + 16 * (q4 && (L == 1 || L == 2) ? 3 - L : L);
            const __m512 sv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(s + col)));
            __m512 out = _mm512_loadu_ps(acc + col);
            out = _mm512_fmadd_ps(_mm512_mul_ps(sv, vdx), _mm512_cvtepi32_ps(_mm512_sub_epi32(y[L], vb)), out);
            if (q4) {
                const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(mn + col)));
                out = _mm512_fmadd_ps(mv, vxs, out);
            }
            _mm512_storeu_ps(acc + col, out);
        }
    }
}

/* nb == 1 only; other token counts, groups whose int32 sums could overflow and runs with a non-finite
 * value take the float loops of weights_kernel.h. */
#define VNNI_COLS(fmt, Q4)                                                                                \
    VNNI_TARGET static void fmt##_cols_vnni(const actlab_wmat *w, const int32_t *idx, const float *xv,    \
                                            int64_t xs, int64_t nk, int nb, int64_t c0, int64_t n,        \
                                            float *acc, int64_t acc_ld, float *tmp, int64_t tld) {        \
        if (nb != 1 || w->group > 65536) {                                                                \
            fmt##_cols_avx512(w, idx, xv, xs, nk, nb, c0, n, acc, acc_ld, tmp, tld);                      \
            return;                                                                                       \
        }                                                                                                 \
        const int64_t ldb = Q4 ? w->ld / 2 : w->ld, G = w->group, n64 = n / 64 * 64;                      \
        const uint8_t *base = (const uint8_t *)w->data + (Q4 ? c0 / 2 : c0);                              \
        int8_t qx[256];                                                                                   \
        for (int64_t k0 = 0, k1; k0 < nk; k0 = k1) {                                                      \
            k1 = run_end_avx512(idx, k0, nk, G);                                                          \
            const uint16_t *s = w->scales + (idx[k0] / G) * w->scale_ld + c0, *mn = Q4 ? s + w->ld : NULL; \
            float amax = 0.0f, xsum = 0.0f;                                                               \
            for (int64_t k = k0; k < k1; ++k) {                                                           \
                amax = fmaxf(amax, fabsf(xv[k * xs]));                                                    \
                xsum += xv[k * xs];                                                                       \
            }                                                                                             \
            if (!(amax < INFINITY) || k1 - k0 > 256) { /* inf (or NaN): the float path propagates it */   \
                fmt##_body_avx512(w, idx + k0, xv + k0 * xs, xs, k1 - k0, 1, c0, n, acc, acc_ld, tmp,     \
                                  tld);                                                                   \
                continue;                                                                                 \
            }                                                                                             \
            if (amax == 0.0f) continue;                                                                   \
            const float dx = amax / 127.0f, inv = 127.0f / amax;                                          \
            int32_t sumqx = 0;                                                                            \
            for (int64_t k = k0; k < k1; ++k) {                                                           \
                qx[k - k0] = (int8_t)lrintf(xv[k * xs] * inv);                                            \
                sumqx += qx[k - k0];                                                                      \
            }                                                                                             \
            const int32_t bias = Q4 ? 0 : 128 * sumqx;                                                    \
            xsum = dx * (float)sumqx; /* the rounded x in the minimum's term too: y = (rounded x) . w */    \
            for (int64_t k = k0; k < k1 && n64;) {                                                        \
                const int cnt = k1 - k >= VNNI_ROWS ? VNNI_ROWS : (int)(k1 - k), first = k == k0,         \
                          last = k + cnt == k1;                                                           \
                int32_t *t = (int32_t *)tmp;                                                              \
                const int8_t *q = qx - k0;                                                                \
                if (first && last) vnni_sweep(base, ldb, Q4, idx, q, k, cnt, 1, 1, n64, t, s, mn, dx, bias, xsum, acc); \
                else if (first) vnni_sweep(base, ldb, Q4, idx, q, k, cnt, 1, 0, n64, t, s, mn, dx, bias, xsum, acc);   \
                else if (last) vnni_sweep(base, ldb, Q4, idx, q, k, cnt, 0, 1, n64, t, s, mn, dx, bias, xsum, acc);    \
                else vnni_sweep(base, ldb, Q4, idx, q, k, cnt, 0, 0, n64, t, s, mn, dx, bias, xsum, acc);              \
                k += cnt;                                                                                 \
            }                                                                                             \
            for (int64_t c = n64; c < n; ++c) { /* the last columns of a matrix, not a multiple of 64 */  \
                int32_t t = 0;                                                                            \
                for (int64_t k = k0; k < k1; ++k) {                                                       \
                    const int64_t row = idx[k] * ldb;                                                     \
                    int32_t q;                                                                            \
                    if (Q4) {                                                                             \
                        const int64_t j = c % 32, byte = (c - j) / 2 + (j < 16 ? j : j - 16);             \
                        q = (base[row + byte] >> (j < 16 ? 0 : 4)) & 15;                                  \
                    } else {                                                                              \
                        q = ((const int8_t *)base)[row + c];                                              \
                    }                                                                                     \
                    t += qx[k - k0] * q;                                                                  \
                }                                                                                         \
                acc[c] += actlab__h2f(s[c]) * dx * (float)t + (Q4 ? actlab__h2f(mn[c]) * xsum : 0.0f);    \
            }                                                                                             \
        }                                                                                                 \
    }
VNNI_COLS(q8, 0)
VNNI_COLS(q4, 1)
#undef VNNI_COLS
#undef VNNI_TARGET
#undef VNNI_INLINE
