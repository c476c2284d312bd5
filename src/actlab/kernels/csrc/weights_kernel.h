/*
 * ISA-templated inner loops of the sparse-input GEMV on bf16 / int8 / int4 weights (weights.h layouts).
 * No include guard: weights.c includes it once per instruction set after defining KSUFFIX, KTARGET and
 * KVBYTES, as sparse_gemv_kernel.h is included by sparse_gemv.c.
 *
 * Every function accumulates a column block [c0, c0 + n) of y for `nb` (<= 8) tokens sharing the kept rows:
 *   acc[b * acc_ld + c] += sum_k xv[k * xs + b] * w[idx[k], c0 + c]
 * For int8/int4 the kept rows of one block of scales are summed unscaled (convert-and-FMA), and the block's
 * scale row is applied once. c0 is a multiple of 32.
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
                              int64_t nk, const int nb, int64_t c0, int64_t n, float *acc, int64_t acc_ld,
                              float *tmp, int64_t tld) {
    (void)tmp; /* no scales: accumulates straight into acc */
    (void)tld;
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

/*
 * int8 / int4: scales are shared by a block of G consecutive rows (inputs), one per column. idx is
 * ascending, so the kept rows of a block are one run [k0, k1). Over it the kernel sums x_i * q[i][c]
 * unscaled into tmp, sweeping the columns 8 (int4) or 4 (int8) rows at a time as the bf16 loop does (a few
 * long sequential streams, which the prefetchers follow), then adds scale[c] * tmp[c] (+ minimum[c] times
 * the run's sum of x for int4) into acc once per block.
 */
static inline int64_t KNAME(run_end)(const int32_t *idx, int64_t k, int64_t nk, int64_t G) {
    const int32_t rb = (int32_t)(idx[k] / G);
    int64_t e = k + 1;
    while (e < nk && idx[e] / G == rb) ++e;
    return e;
}

KINLINE WV KNAME(ld_h)(const uint16_t *p) {
#ifdef KH2FV
    return (WV)KH2FV(p);
#else
    WV v;
    for (int i = 0; i < KW; ++i) v[i] = actlab__h2f(p[i]);
    return v;
#endif
}

/* acc[b][c] += s[c] * tmp[b][c] (+ m[c] * xsum[b] when m); c in [0, n). */
KINLINE void KNAME(fold)(const uint16_t *s, const uint16_t *m, const float *xsum, const int nb, int64_t n,
                         const float *tmp, int64_t tld, float *acc, int64_t acc_ld) {
    const int64_t nv = n / KW * KW;
    int64_t c = 0;
    for (; c < nv; c += KW) {
        const WV sv = KNAME(ld_h)(s + c), mv = m ? KNAME(ld_h)(m + c) : (WV){0};
        for (int b = 0; b < nb; ++b) {
            float *a = acc + b * acc_ld + c;
            KSTORE(a, KLOAD(a) + sv * KLOAD(tmp + b * tld + c) + mv * xsum[b]);
        }
    }
    for (; c < n; ++c)
        for (int b = 0; b < nb; ++b)
            acc[b * acc_ld + c] += actlab__h2f(s[c]) * tmp[b * tld + c] + (m ? actlab__h2f(m[c]) * xsum[b] : 0.0f);
}

/* int8: tmp[b][c] += sum over the run of x * q, four rows per sweep. */
KINLINE void KNAME(q8_sum)(const int8_t *base, int64_t ld, const int32_t *idx, const float *xv, int64_t xs,
                           int64_t k0, int64_t k1, const int nb, int64_t n, float *tmp, int64_t tld) {
    const int64_t nv = n / KW * KW;
    int64_t k = k0;
    for (; k + 4 <= k1; k += 4) {
        const int8_t *r0 = base + idx[k] * ld, *r1 = base + idx[k + 1] * ld;
        const int8_t *r2 = base + idx[k + 2] * ld, *r3 = base + idx[k + 3] * ld;
        const float sc[4] = {1.0f, 1.0f, 1.0f, 1.0f};
        COEFS(4)
        int64_t c = 0;
        for (; c < nv; c += KW) {
            const WV w0 = KNAME(ld_q8)(r0 + c), w1 = KNAME(ld_q8)(r1 + c);
            const WV w2 = KNAME(ld_q8)(r2 + c), w3 = KNAME(ld_q8)(r3 + c);
            for (int b = 0; b < nb; ++b) {
                float *t = tmp + b * tld + c;
                KSTORE(t, KLOAD(t) + cf[0][b] * w0 + cf[1][b] * w1 + cf[2][b] * w2 + cf[3][b] * w3);
            }
        }
        for (; c < n; ++c)
            for (int b = 0; b < nb; ++b)
                tmp[b * tld + c] += cf[0][b] * r0[c] + cf[1][b] * r1[c] + cf[2][b] * r2[c] + cf[3][b] * r3[c];
    }
    for (; k < k1; ++k) {
        const int8_t *r0 = base + idx[k] * ld;
        const float sc[4] = {1.0f, 0, 0, 0};
        COEFS(1)
        int64_t c = 0;
        for (; c < nv; c += KW) {
            const WV w0 = KNAME(ld_q8)(r0 + c);
            for (int b = 0; b < nb; ++b) KSTORE(tmp + b * tld + c, KLOAD(tmp + b * tld + c) + cf[0][b] * w0);
        }
        for (; c < n; ++c)
            for (int b = 0; b < nb; ++b) tmp[b * tld + c] += cf[0][b] * r0[c];
    }
}

/* One int4 nibble of column j of a row whose 32-column chunks start at byte row (j relative to it). */
static inline float KNAME(q4_at)(const uint8_t *row, int64_t j) {
    const int64_t q = j % 32, byte = (j - q) / 2 + (q < 16 ? q : q - 16);
    return (float)((row[byte] >> (q < 16 ? 0 : 4)) & 15);
}

/* int4: tmp[b][c] += sum over the run of x * nibble. Per 32-column chunk the KW-byte vectors at byte
 * offset j of the chunk's 16 bytes hold columns j.. (low nibbles) and j + 16.. (high nibbles). */
KINLINE void KNAME(q4_sum)(const uint8_t *base, int64_t ldb, const int32_t *idx, const float *xv, int64_t xs,
                           int64_t k0, int64_t k1, const int nb, int64_t n, float *tmp, int64_t tld) {
    const WI32 m15 = (WI32){0} + 15;
    const int64_t nc = n / 32 * 32; /* whole chunks; a last partial chunk runs the scalar loop */
    int64_t k = k0;
    for (; k + 4 <= k1; k += 4) {
        const uint8_t *r0 = base + idx[k] * ldb, *r1 = base + idx[k + 1] * ldb;
        const uint8_t *r2 = base + idx[k + 2] * ldb, *r3 = base + idx[k + 3] * ldb;
        const float sc[4] = {1.0f, 1.0f, 1.0f, 1.0f};
        COEFS(4)
        for (int64_t c = 0; c < nc; c += 32)
            for (int64_t j = 0; j < 16; j += KW) {
                const WI32 v0 = WIDEN_U8(r0 + c / 2 + j), v1 = WIDEN_U8(r1 + c / 2 + j);
                const WI32 v2 = WIDEN_U8(r2 + c / 2 + j), v3 = WIDEN_U8(r3 + c / 2 + j);
                const WV l0 = __builtin_convertvector(v0 & m15, WV), l1 = __builtin_convertvector(v1 & m15, WV);
                const WV l2 = __builtin_convertvector(v2 & m15, WV), l3 = __builtin_convertvector(v3 & m15, WV);
                const WV u0 = __builtin_convertvector(v0 >> 4, WV), u1 = __builtin_convertvector(v1 >> 4, WV);
                const WV u2 = __builtin_convertvector(v2 >> 4, WV), u3 = __builtin_convertvector(v3 >> 4, WV);
                for (int b = 0; b < nb; ++b) {
                    float *t = tmp + b * tld + c + j;
                    KSTORE(t, KLOAD(t) + cf[0][b] * l0 + cf[1][b] * l1 + cf[2][b] * l2 + cf[3][b] * l3);
                    t += 16;
                    KSTORE(t, KLOAD(t) + cf[0][b] * u0 + cf[1][b] * u1 + cf[2][b] * u2 + cf[3][b] * u3);
                }
            }
        for (int64_t c = nc; c < n; ++c)
            for (int b = 0; b < nb; ++b)
                tmp[b * tld + c] += cf[0][b] * KNAME(q4_at)(r0, c) + cf[1][b] * KNAME(q4_at)(r1, c) +
                                    cf[2][b] * KNAME(q4_at)(r2, c) + cf[3][b] * KNAME(q4_at)(r3, c);
    }
    for (; k < k1; ++k) {
        const uint8_t *r0 = base + idx[k] * ldb;
        const float sc[4] = {1.0f, 0, 0, 0};
        COEFS(1)
        for (int64_t c = 0; c < nc; c += 32)
            for (int64_t j = 0; j < 16; j += KW) {
                const WI32 v0 = WIDEN_U8(r0 + c / 2 + j);
                const WV l0 = __builtin_convertvector(v0 & m15, WV), u0 = __builtin_convertvector(v0 >> 4, WV);
                for (int b = 0; b < nb; ++b) {
                    float *t = tmp + b * tld + c + j;
                    KSTORE(t, KLOAD(t) + cf[0][b] * l0);
                    KSTORE(t + 16, KLOAD(t + 16) + cf[0][b] * u0);
                }
            }
        for (int64_t c = nc; c < n; ++c)
            for (int b = 0; b < nb; ++b) tmp[b * tld + c] += cf[0][b] * KNAME(q4_at)(r0, c);
    }
}


/*
 * One token (the decode case): a block run goes through in sweeps of R (4 or 8) rows over all n columns,
 * the last sweep padded with zero-coefficient repeats of a kept row (its loads hit L1). The first sweep
 * starts from zero instead of tmp and the last adds scale * sum (+ minimum * xsum) straight into acc, so a
 * run of at most R rows (most runs from ~75% sparsity on) touches no scratch at all.
 */
#define SWEEP_ROWS(T, LDW)                                                                                \
    const T *r[8];                                                                                        \
    float cf[8];                                                                                          \
    _Pragma("GCC unroll 8") for (int i = 0; i < R; ++i) {                                                 \
        const int64_t kk = i < cnt ? k + i : k;                                                           \
        r[i] = base + idx[kk] * (LDW);                                                                    \
        cf[i] = i < cnt ? xv[kk * xs] : 0.0f;                                                             \
    }

KINLINE void KNAME(q8_sweep)(const int8_t *base, int64_t ld, const int32_t *idx, const float *xv, int64_t xs,
                             int64_t k, int cnt, const int R, const int first, const int last, int64_t n,
                             float *tmp, const uint16_t *s, float *acc) {
    SWEEP_ROWS(int8_t, ld)
    const int64_t nv = n / KW * KW;
    int64_t c = 0;
    for (; c < nv; c += KW) {
        WV t = first ? (WV){0} : (WV)KLOAD(tmp + c);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) t += cf[i] * KNAME(ld_q8)(r[i] + c);
        if (last) KSTORE(acc + c, KLOAD(acc + c) + KNAME(ld_h)(s + c) * t);
        else KSTORE(tmp + c, t);
    }
    for (; c < n; ++c) {
        float t = first ? 0.0f : tmp[c];
        for (int i = 0; i < R; ++i) t += cf[i] * r[i][c];
        if (last) acc[c] += actlab__h2f(s[c]) * t;
        else tmp[c] = t;
    }
}

KINLINE void KNAME(q4_sweep)(const uint8_t *base, int64_t ldb, const int32_t *idx, const float *xv, int64_t xs,
                             int64_t k, int cnt, const int R, const int first, const int last, int64_t n,
                             float *tmp, const uint16_t *s, float xsum, float *acc) {
    SWEEP_ROWS(uint8_t, ldb)
    const WI32 m15 = (WI32){0} + 15;
    const uint16_t *m = s + (ldb * 2); /* the minimum row follows the scale row (scale_ld >= 2 ld) */
    const int64_t nc = n / 32 * 32;
    for (int64_t c = 0; c < nc; c += 32)
        for (int64_t j = 0; j < 16; j += KW) {
            const int64_t cl = c + j, ch = cl + 16;
            WV lo = first ? (WV){0} : (WV)KLOAD(tmp + cl), hi = first ? (WV){0} : (WV)KLOAD(tmp + ch);
#pragma GCC unroll 8
            for (int i = 0; i < R; ++i) {
                const WI32 v = WIDEN_U8(r[i] + c / 2 + j);
                lo += cf[i] * __builtin_convertvector(v & m15, WV);
                hi += cf[i] * __builtin_convertvector(v >> 4, WV);
            }
            if (last) {
                KSTORE(acc + cl, KLOAD(acc + cl) + KNAME(ld_h)(s + cl) * lo + KNAME(ld_h)(m + cl) * xsum);
                KSTORE(acc + ch, KLOAD(acc + ch) + KNAME(ld_h)(s + ch) * hi + KNAME(ld_h)(m + ch) * xsum);
            } else {
                KSTORE(tmp + cl, lo);
                KSTORE(tmp + ch, hi);
            }
        }
    for (int64_t c = nc; c < n; ++c) {
        float t = first ? 0.0f : tmp[c];
        for (int i = 0; i < R; ++i) t += cf[i] * KNAME(q4_at)(r[i], c);
        if (last) acc[c] += actlab__h2f(s[c]) * t + actlab__h2f(m[c]) * xsum;
        else tmp[c] = t;
    }
}
#undef SWEEP_ROWS

/* The four (first, last) variants as constants, so each sweep loop is compiled branch-free. */
#define SWEEP_DISPATCH(CALL)                                                                              \
    if (first && last) CALL(1, 1);                                                                        \
    else if (first) CALL(1, 0);                                                                           \
    else if (last) CALL(0, 1);                                                                            \
    else CALL(0, 0);

KINLINE void KNAME(q8_run1)(const actlab_wmat *w, const int8_t *base, const int32_t *idx, const float *xv,
                            int64_t xs, int64_t k0, int64_t k1, int64_t n, float *tmp, const uint16_t *s,
                            float *acc) {
    const int64_t ld = w->ld;
    for (int64_t k = k0; k < k1;) {
        const int cnt = k1 - k >= 8 ? 8 : (int)(k1 - k), first = k == k0, last = k + cnt == k1;
#define Q8_CALL(F, L) KNAME(q8_sweep)(base, ld, idx, xv, xs, k, cnt, cnt > 4 ? 8 : 4, F, L, n, tmp, s, acc)
        SWEEP_DISPATCH(Q8_CALL)
#undef Q8_CALL
        k += cnt;
    }
}

KINLINE void KNAME(q4_run1)(const actlab_wmat *w, const uint8_t *base, const int32_t *idx, const float *xv,
                            int64_t xs, int64_t k0, int64_t k1, int64_t n, float *tmp, const uint16_t *s,
                            float xsum, float *acc) {
    const int64_t ldb = w->ld / 2;
    for (int64_t k = k0; k < k1;) {
        const int cnt = k1 - k >= 8 ? 8 : (int)(k1 - k), first = k == k0, last = k + cnt == k1;
#define Q4_CALL(F, L) KNAME(q4_sweep)(base, ldb, idx, xv, xs, k, cnt, cnt > 4 ? 8 : 4, F, L, n, tmp, s, xsum, acc)
        SWEEP_DISPATCH(Q4_CALL)
#undef Q4_CALL
        k += cnt;
    }
}
#undef SWEEP_DISPATCH

/* tmp: scratch of nb rows of tld >= n floats (the caller's). */
#define QBODY(fmt, T, WIDTH_DIV, HAS_MIN, RUN1)                                                           \
    KINLINE void KNAME(fmt##_body)(const actlab_wmat *w, const int32_t *idx, const float *xv, int64_t xs,  \
                                   int64_t nk, const int nb, int64_t c0, int64_t n, float *acc,            \
                                   int64_t acc_ld, float *tmp, int64_t tld) {                              \
        const T *base = (const T *)w->data + c0 / (WIDTH_DIV);                                             \
        const int64_t ldw = w->ld / (WIDTH_DIV), G = w->group;                                             \
        for (int64_t k0 = 0, k1; k0 < nk; k0 = k1) {                                                       \
            k1 = KNAME(run_end)(idx, k0, nk, G);                                                           \
            const uint16_t *s = w->scales + (idx[k0] / G) * w->scale_ld + c0;                              \
            float xsum[8] = {0};                                                                           \
            for (int b = 0; b < nb; ++b)                                                                   \
                if (HAS_MIN)                                                                               \
                    for (int64_t k = k0; k < k1; ++k) xsum[b] += xv[k * xs + b];                           \
            if (nb == 1) {                                                                                 \
                RUN1;                                                                                      \
                continue;                                                                                  \
            }                                                                                              \
            for (int b = 0; b < nb; ++b) memset(tmp + b * tld, 0, (size_t)n * sizeof(float));             \
            KNAME(fmt##_sum)(base, ldw, idx, xv, xs, k0, k1, nb, n, tmp, tld);                             \
            KNAME(fold)(s, HAS_MIN ? s + w->ld : NULL, xsum, nb, n, tmp, tld, acc, acc_ld);                \
        }                                                                                                  \
    }
QBODY(q8, int8_t, 1, 0, KNAME(q8_run1)(w, base, idx, xv, xs, k0, k1, n, tmp, s, acc))
QBODY(q4, uint8_t, 2, 1, KNAME(q4_run1)(w, base, idx, xv, xs, k0, k1, n, tmp, s, xsum[0], acc))
#undef QBODY

/* Entry points: B == 1 gets its own inlined copy (the token loop folds away), other nb the general one.
 * tmp (nb rows of tld floats, tld >= n) is scratch for int8/int4; bf16 ignores it. */
#define WENTRY(fmt)                                                                                       \
    KTARGET static void KNAME(fmt##_cols)(const actlab_wmat *w, const int32_t *idx, const float *xv,      \
                                          int64_t xs, int64_t nk, int nb, int64_t c0, int64_t n,          \
                                          float *acc, int64_t acc_ld, float *tmp, int64_t tld) {          \
        if (nb == 1) KNAME(fmt##_body)(w, idx, xv, xs, nk, 1, c0, n, acc, acc_ld, tmp, tld);              \
        else KNAME(fmt##_body)(w, idx, xv, xs, nk, nb, c0, n, acc, acc_ld, tmp, tld);                     \
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
#undef KLOAD
#undef KSTORE
#undef KINLINE
