/*
 * ISA-templated inner loops of the sparse-input GEMV on bf16 / int8 / int4 weights (weights.h layouts).
 * No include guard: weights.c includes it once per instruction set after defining KSUFFIX, KTARGET and
 * KVBYTES, as sparse_gemv_kernel.h is included by sparse_gemv.c.
 *
 * Every function accumulates a column block [c0, c0 + n) of y for `nb` (<= 8) tokens sharing the kept rows:
 *   acc[b * acc_ld + c] += sum_k xv[k * xs + b] * w[idx[k], c0 + c]
 * For int8/int4 the group scale is folded into the token's coefficient once per (row, group), so the inner
 * loop is convert-and-FMA: y += (x_i * s_g) * float(q). c0 is a multiple of the group.
 *
 * VNNI is not used: this layout accumulates along outputs (one scalar x_i times a row), so there is no
 * int8 dot product along k to hand to vpdpbusd; the int->float convert + FMA keeps it memory-bound.
 */

#define KCAT2(a, b) a##_##b
#define KCAT(a, b) KCAT2(a, b)
#define KNAME(name) KCAT(name, KSUFFIX)
#define KW ((int64_t)(KVBYTES / 4))
#define WV KNAME(wvec)
#define WVU KNAME(wvecu)
#define WI8 KNAME(wi8)
#define WU8 KNAME(wu8)
#define WU16 KNAME(wu16)
#define WU32 KNAME(wu32)
#define WI32 KNAME(wi32)
#define KLOAD(p) (*(const WVU *)(p))
#define KSTORE(p, v) (*(WVU *)(p) = (v))
#define KINLINE KTARGET static inline __attribute__((always_inline))

typedef float WV __attribute__((vector_size(KVBYTES)));
typedef float WVU __attribute__((vector_size(KVBYTES), aligned(4), may_alias));
typedef int8_t WI8 __attribute__((vector_size(KVBYTES / 4), aligned(1), may_alias));
typedef uint8_t WU8 __attribute__((vector_size(KVBYTES / 4), aligned(1), may_alias));
typedef uint16_t WU16 __attribute__((vector_size(KVBYTES / 2), aligned(2), may_alias));
typedef uint32_t WU32 __attribute__((vector_size(KVBYTES)));
typedef int32_t WI32 __attribute__((vector_size(KVBYTES)));

/* KW bytes widened to int32 lanes. GCC lowers a direct int8 -> float __builtin_convertvector to one
 * scalar convert per lane (measured: int8 at 1.3 GB/s against fp32's 16), so x86 paths widen with
 * vpmovsxbd / vpmovzxbd (KWIDEN_I8 / KWIDEN_U8, defined by weights.c) and convert int32 -> float. */
#ifdef KWIDEN_I8
#define WIDEN_I8(p) ((WI32)KWIDEN_I8(p))
#define WIDEN_U8(p) ((WI32)KWIDEN_U8(p))
#else
KINLINE WI32 KNAME(widen_i8)(const int8_t *p) {
    WI32 v;
    for (int i = 0; i < KW; ++i) v[i] = p[i];
    return v;
}
KINLINE WI32 KNAME(widen_u8)(const uint8_t *p) {
    WI32 v;
    for (int i = 0; i < KW; ++i) v[i] = p[i];
    return v;
}
#define WIDEN_I8(p) KNAME(widen_i8)(p)
#define WIDEN_U8(p) KNAME(widen_u8)(p)
#endif
#ifdef KH2F
#define H2F(h) KH2F(h)
#else
#define H2F(h) actlab__h2f(h)
#endif

KINLINE WV KNAME(ld_bf16)(const uint16_t *p) {
    const WU32 u = __builtin_convertvector(*(const WU16 *)p, WU32) << 16;
    return (WV)u;
}

KINLINE WV KNAME(ld_q8)(const int8_t *p) { return __builtin_convertvector(WIDEN_I8(p), WV); }

/* Coefficients xv[k*xs+b] * scale for up to 4 rows and nb tokens. */
#define COEFS(NR)                                                                                         \
    float cf[4][8];                                                                                       \
    for (int i = 0; i < (NR); ++i)                                                                        \
        for (int b = 0; b < nb; ++b) cf[i][b] = xv[(k + i) * xs + b] * sc[i];

/* bf16: one element per column, no scales (nb tokens). */
KINLINE void KNAME(bf16_body)(const actlab_wmat *w, const int32_t *idx, const float *xv, int64_t xs,
                              int64_t nk, const int nb, int64_t c0, int64_t n, float *acc, int64_t acc_ld) {
    const uint16_t *base = (const uint16_t *)w->data + c0;
    const int64_t nv = n / KW * KW, ld = w->ld;
    int64_t k = 0;
    for (; k + 4 <= nk; k += 4) {
        const uint16_t *r0 = base + idx[k] * ld, *r1 = base + idx[k + 1] * ld;
        const uint16_t *r2 = base + idx[k + 2] * ld, *r3 = base + idx[k + 3] * ld;
        const float sc[4] = {1.0f, 1.0f, 1.0f, 1.0f};
        COEFS(4)
        int64_t c = 0;
        for (; c < nv; c += KW) {
            const WV w0 = KNAME(ld_bf16)(r0 + c), w1 = KNAME(ld_bf16)(r1 + c);
            const WV w2 = KNAME(ld_bf16)(r2 + c), w3 = KNAME(ld_bf16)(r3 + c);
            for (int b = 0; b < nb; ++b) {
                float *a = acc + b * acc_ld + c;
                KSTORE(a, KLOAD(a) + cf[0][b] * w0 + cf[1][b] * w1 + cf[2][b] * w2 + cf[3][b] * w3);
            }
        }
        for (; c < n; ++c)
            for (int b = 0; b < nb; ++b)
                acc[b * acc_ld + c] += cf[0][b] * actlab__bf16(r0[c]) + cf[1][b] * actlab__bf16(r1[c]) +
                                       cf[2][b] * actlab__bf16(r2[c]) + cf[3][b] * actlab__bf16(r3[c]);
    }
    for (; k < nk; ++k) {
        const uint16_t *r0 = base + idx[k] * ld;
        const float sc[4] = {1.0f, 0, 0, 0};
        COEFS(1)
        int64_t c = 0;
        for (; c < nv; c += KW) {
            const WV w0 = KNAME(ld_bf16)(r0 + c);
            for (int b = 0; b < nb; ++b) KSTORE(acc + b * acc_ld + c, KLOAD(acc + b * acc_ld + c) + cf[0][b] * w0);
        }
        for (; c < n; ++c)
            for (int b = 0; b < nb; ++b) acc[b * acc_ld + c] += cf[0][b] * actlab__bf16(r0[c]);
    }
}

/* int8: per (row, group) coefficient, then convert + FMA over the group's columns. */
KINLINE void KNAME(q8_body)(const actlab_wmat *w, const int32_t *idx, const float *xv, int64_t xs,
                            int64_t nk, const int nb, int64_t c0, int64_t n, float *acc, int64_t acc_ld) {
    const int8_t *data = (const int8_t *)w->data;
    const int64_t ld = w->ld, G = w->group, g_first = c0 / G;
    int64_t k = 0;
    for (; k + 4 <= nk; k += 4) {
        const int8_t *r0 = data + idx[k] * ld + c0, *r1 = data + idx[k + 1] * ld + c0;
        const int8_t *r2 = data + idx[k + 2] * ld + c0, *r3 = data + idx[k + 3] * ld + c0;
        const uint16_t *h0 = w->scales + idx[k] * w->scale_ld + g_first;
        const uint16_t *h1 = w->scales + idx[k + 1] * w->scale_ld + g_first;
        const uint16_t *h2 = w->scales + idx[k + 2] * w->scale_ld + g_first;
        const uint16_t *h3 = w->scales + idx[k + 3] * w->scale_ld + g_first;
        for (int64_t g0 = 0, gi = 0; g0 < n; g0 += G, ++gi) {
            const float sc[4] = {H2F(h0[gi]), H2F(h1[gi]), H2F(h2[gi]), H2F(h3[gi])};
            COEFS(4)
            const int64_t gn = n - g0 < G ? n - g0 : G, gv = g0 + gn / KW * KW;
            int64_t c = g0;
            for (; c < gv; c += KW) {
                const WV w0 = KNAME(ld_q8)(r0 + c), w1 = KNAME(ld_q8)(r1 + c);
                const WV w2 = KNAME(ld_q8)(r2 + c), w3 = KNAME(ld_q8)(r3 + c);
                for (int b = 0; b < nb; ++b) {
                    float *a = acc + b * acc_ld + c;
                    KSTORE(a, KLOAD(a) + cf[0][b] * w0 + cf[1][b] * w1 + cf[2][b] * w2 + cf[3][b] * w3);
                }
            }
            for (; c < g0 + gn; ++c)
                for (int b = 0; b < nb; ++b)
                    acc[b * acc_ld + c] += cf[0][b] * r0[c] + cf[1][b] * r1[c] + cf[2][b] * r2[c] + cf[3][b] * r3[c];
        }
    }
    for (; k < nk; ++k) {
        const int8_t *r0 = data + idx[k] * ld + c0;
        const uint16_t *h0 = w->scales + idx[k] * w->scale_ld + g_first;
        for (int64_t g0 = 0, gi = 0; g0 < n; g0 += G, ++gi) {
            const float sc[4] = {H2F(h0[gi]), 0, 0, 0};
            COEFS(1)
            const int64_t gn = n - g0 < G ? n - g0 : G, gv = g0 + gn / KW * KW;
            int64_t c = g0;
            for (; c < gv; c += KW) {
                const WV w0 = KNAME(ld_q8)(r0 + c);
                for (int b = 0; b < nb; ++b) KSTORE(acc + b * acc_ld + c, KLOAD(acc + b * acc_ld + c) + cf[0][b] * w0);
            }
            for (; c < g0 + gn; ++c)
                for (int b = 0; b < nb; ++b) acc[b * acc_ld + c] += cf[0][b] * r0[c];
        }
    }
}

/* One int4 column of row r (group-relative column j of a group starting at byte gb). */
static inline float KNAME(q4_at)(const uint8_t *gb, int64_t j, int64_t half) {
    const uint8_t v = gb[j < half ? j : j - half];
    return (float)((j < half ? (v & 15) : (v >> 4)) - 8);
}

/*
 * int4: a full group is two contiguous half-groups of columns (low, high nibbles of the same bytes).
 * The -8 offset is applied once per vector as -8 * sum of the coefficients instead of per weight.
 * A partial last group (n not a multiple of the group) runs the scalar loop.
 */
KINLINE void KNAME(q4_body)(const actlab_wmat *w, const int32_t *idx, const float *xv, int64_t xs,
                            int64_t nk, const int nb, int64_t c0, int64_t n, float *acc, int64_t acc_ld) {
    const uint8_t *data = (const uint8_t *)w->data;
    const int64_t ldb = w->ld / 2, G = w->group, half = G / 2, g_first = c0 / G;
    const WI32 m15 = (WI32){0} + 15;
    int64_t k = 0;
    /* Eight rows per pass over a full group: half the accumulator loads/stores and loop overhead per
     * weight of four (int4 groups are short, so the per-group work dominates otherwise). */
    for (; k + 8 <= nk && nb == 1 && n % G == 0; k += 8) { /* one token, whole groups only */
        const uint8_t *r[8];
        const uint16_t *h[8];
        for (int i = 0; i < 8; ++i) {
            r[i] = data + idx[k + i] * ldb + c0 / 2;
            h[i] = w->scales + idx[k + i] * w->scale_ld + g_first;
        }
        for (int64_t g0 = 0, gi = 0; g0 < n; g0 += G, ++gi) {
            float cf8[8], off = 0.0f;
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) {
                cf8[i] = xv[(k + i) * xs] * H2F(h[i][gi]);
                off -= 8.0f * cf8[i];
            }
            for (int64_t j = 0; j < half; j += KW) {
                WV lo = KLOAD(acc + g0 + j) + off, hi = KLOAD(acc + g0 + half + j) + off;
#pragma GCC unroll 8
                for (int i = 0; i < 8; ++i) {
                    const WI32 v = WIDEN_U8(r[i] + g0 / 2 + j);
                    lo += cf8[i] * __builtin_convertvector(v & m15, WV);
                    hi += cf8[i] * __builtin_convertvector(v >> 4, WV);
                }
                KSTORE(acc + g0 + j, lo);
                KSTORE(acc + g0 + half + j, hi);
            }
        }
    }
    for (; k + 4 <= nk; k += 4) {
        const uint8_t *r0 = data + idx[k] * ldb + c0 / 2, *r1 = data + idx[k + 1] * ldb + c0 / 2;
        const uint8_t *r2 = data + idx[k + 2] * ldb + c0 / 2, *r3 = data + idx[k + 3] * ldb + c0 / 2;
        const uint16_t *h0 = w->scales + idx[k] * w->scale_ld + g_first;
        const uint16_t *h1 = w->scales + idx[k + 1] * w->scale_ld + g_first;
        const uint16_t *h2 = w->scales + idx[k + 2] * w->scale_ld + g_first;
        const uint16_t *h3 = w->scales + idx[k + 3] * w->scale_ld + g_first;
        for (int64_t g0 = 0, gi = 0; g0 < n; g0 += G, ++gi) {
            const float sc[4] = {H2F(h0[gi]), H2F(h1[gi]), H2F(h2[gi]), H2F(h3[gi])};
            COEFS(4)
            const uint8_t *b0 = r0 + g0 / 2, *b1 = r1 + g0 / 2, *b2 = r2 + g0 / 2, *b3 = r3 + g0 / 2;
            if (n - g0 >= G) {
                float off[8];
                for (int b = 0; b < nb; ++b) off[b] = -8.0f * (cf[0][b] + cf[1][b] + cf[2][b] + cf[3][b]);
                for (int64_t j = 0; j < half; j += KW) {
                    const WI32 v0 = WIDEN_U8(b0 + j), v1 = WIDEN_U8(b1 + j);
                    const WI32 v2 = WIDEN_U8(b2 + j), v3 = WIDEN_U8(b3 + j);
                    const WV l0 = __builtin_convertvector(v0 & m15, WV), l1 = __builtin_convertvector(v1 & m15, WV);
                    const WV l2 = __builtin_convertvector(v2 & m15, WV), l3 = __builtin_convertvector(v3 & m15, WV);
                    const WV u0 = __builtin_convertvector(v0 >> 4, WV), u1 = __builtin_convertvector(v1 >> 4, WV);
                    const WV u2 = __builtin_convertvector(v2 >> 4, WV), u3 = __builtin_convertvector(v3 >> 4, WV);
                    for (int b = 0; b < nb; ++b) {
                        float *a = acc + b * acc_ld + g0 + j;
                        KSTORE(a, KLOAD(a) + off[b] + cf[0][b] * l0 + cf[1][b] * l1 + cf[2][b] * l2 + cf[3][b] * l3);
                        a += half;
                        KSTORE(a, KLOAD(a) + off[b] + cf[0][b] * u0 + cf[1][b] * u1 + cf[2][b] * u2 + cf[3][b] * u3);
                    }
                }
            } else {
                for (int64_t j = 0; j < n - g0; ++j)
                    for (int b = 0; b < nb; ++b)
                        acc[b * acc_ld + g0 + j] += cf[0][b] * KNAME(q4_at)(b0, j, half) +
                                                    cf[1][b] * KNAME(q4_at)(b1, j, half) +
                                                    cf[2][b] * KNAME(q4_at)(b2, j, half) +
                                                    cf[3][b] * KNAME(q4_at)(b3, j, half);
            }
        }
    }
    for (; k < nk; ++k) {
        const uint8_t *r0 = data + idx[k] * ldb + c0 / 2;
        const uint16_t *h0 = w->scales + idx[k] * w->scale_ld + g_first;
        for (int64_t g0 = 0, gi = 0; g0 < n; g0 += G, ++gi) {
            const float sc[4] = {H2F(h0[gi]), 0, 0, 0};
            COEFS(1)
            const uint8_t *b0 = r0 + g0 / 2;
            if (n - g0 >= G) {
                for (int64_t j = 0; j < half; j += KW) {
                    const WI32 v0 = WIDEN_U8(b0 + j);
                    const WV l0 = __builtin_convertvector(v0 & m15, WV) - 8.0f;
                    const WV u0 = __builtin_convertvector(v0 >> 4, WV) - 8.0f;
                    for (int b = 0; b < nb; ++b) {
                        float *a = acc + b * acc_ld + g0 + j;
                        KSTORE(a, KLOAD(a) + cf[0][b] * l0);
                        KSTORE(a + half, KLOAD(a + half) + cf[0][b] * u0);
                    }
                }
            } else {
                for (int64_t j = 0; j < n - g0; ++j)
                    for (int b = 0; b < nb; ++b) acc[b * acc_ld + g0 + j] += cf[0][b] * KNAME(q4_at)(b0, j, half);
            }
        }
    }
}

/* Entry points: B == 1 gets its own inlined copy (the token loop folds away), other nb the general one. */
#define WENTRY(fmt)                                                                                       \
    KTARGET static void KNAME(fmt##_cols)(const actlab_wmat *w, const int32_t *idx, const float *xv,      \
                                          int64_t xs, int64_t nk, int nb, int64_t c0, int64_t n,          \
                                          float *acc, int64_t acc_ld) {                                   \
        if (nb == 1) KNAME(fmt##_body)(w, idx, xv, xs, nk, 1, c0, n, acc, acc_ld);                        \
        else KNAME(fmt##_body)(w, idx, xv, xs, nk, nb, c0, n, acc, acc_ld);                               \
    }
WENTRY(bf16)
WENTRY(q8)
WENTRY(q4)
#undef WENTRY

#undef COEFS
#undef KCAT2
#undef KCAT
#undef KNAME
#undef KW
#undef WV
#undef WVU
#undef WI8
#undef WU8
#undef WU16
#undef WU32
#undef WI32
#undef WIDEN_I8
#undef WIDEN_U8
#undef H2F
#undef KLOAD
#undef KSTORE
#undef KINLINE
