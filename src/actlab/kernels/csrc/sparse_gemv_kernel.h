/*
 * ISA-templated inner loops of the sparse-input GEMV. Deliberately has no include guard: sparse_gemv.c
 * includes it once per instruction set after defining
 *   KSUFFIX  name suffix (generic, avx2, avx512)
 *   KTARGET  function attribute selecting the instruction set (may be empty)
 *   KVBYTES  vector width in bytes (16, 32, 64)
 * The loops are written with GCC/Clang vector extensions so one body serves every width; `acc += s * w`
 * contracts to an FMA where the target has one (-ffp-contract=fast is GCC's default outside ISO mode).
 *
 * Layout conventions (all fp32, row-major):
 *   wt[r * ld + c]    weight row r (an input channel for the transposed layout)
 *   idx[k], xv[k*B+b] kept row k and the masked value of token b for that row (0 where b masks it)
 *   y[b * y_ld + c]   output of token b
 */

#define KCAT2(a, b) a##_##b
#define KCAT(a, b) KCAT2(a, b)
#define KNAME(name) KCAT(name, KSUFFIX)
#define KV KNAME(kvec)
#define KVU KNAME(kvecu)
#define KW ((int64_t)(KVBYTES / 4))      /* floats per vector */
#define KLOAD(p) (*(const KVU *)(p))
#define KSTORE(p, v) (*(KVU *)(p) = (v))

typedef float KV __attribute__((vector_size(KVBYTES)));
/* aligned(4) makes dereferences unaligned loads/stores: weight rows are only float-aligned. */
typedef float KVU __attribute__((vector_size(KVBYTES), aligned(4), may_alias));

/*
 * y[c] += sum_k xv[k] * wt[idx[k]*ld + c0 + c] for c in [0, n), one token. The caller keeps n to one
 * column block so this slice of y stays in cache while the weight rows stream past it. Eight rows are
 * folded into each load/store of the accumulator: eight concurrent row streams also keep more memory
 * requests in flight (5-9% faster than four on 576-float rows, the same on long rows).
 */
KTARGET static void KNAME(cols_b1)(const float *wt, int64_t ld, const int32_t *idx, const float *xv,
                                   int64_t nk, int64_t c0, int64_t n, float *y) {
    const int64_t nv = n / KW * KW;
    float *acc = y;
    const float *base = wt + c0;
    int64_t k = 0;
    for (; k + 8 <= nk; k += 8) {
        const float *r0 = base + idx[k] * ld, *r1 = base + idx[k + 1] * ld;
        const float *r2 = base + idx[k + 2] * ld, *r3 = base + idx[k + 3] * ld;
        const float *r4 = base + idx[k + 4] * ld, *r5 = base + idx[k + 5] * ld;
        const float *r6 = base + idx[k + 6] * ld, *r7 = base + idx[k + 7] * ld;
        const float s0 = xv[k], s1 = xv[k + 1], s2 = xv[k + 2], s3 = xv[k + 3];
        const float s4 = xv[k + 4], s5 = xv[k + 5], s6 = xv[k + 6], s7 = xv[k + 7];
        int64_t c = 0;
        for (; c < nv; c += KW) {
            KV a = KLOAD(acc + c);
            a += s0 * KLOAD(r0 + c);
            a += s1 * KLOAD(r1 + c);
            a += s2 * KLOAD(r2 + c);
            a += s3 * KLOAD(r3 + c);
            a += s4 * KLOAD(r4 + c);
            a += s5 * KLOAD(r5 + c);
            a += s6 * KLOAD(r6 + c);
            a += s7 * KLOAD(r7 + c);
            KSTORE(acc + c, a);
        }
        for (; c < n; ++c)
            acc[c] += s0 * r0[c] + s1 * r1[c] + s2 * r2[c] + s3 * r3[c] + s4 * r4[c] + s5 * r5[c] +
                      s6 * r6[c] + s7 * r7[c];
    }
    for (; k + 4 <= nk; k += 4) {
        const float *r0 = base + idx[k] * ld, *r1 = base + idx[k + 1] * ld;
        const float *r2 = base + idx[k + 2] * ld, *r3 = base + idx[k + 3] * ld;
        const float s0 = xv[k], s1 = xv[k + 1], s2 = xv[k + 2], s3 = xv[k + 3];
        int64_t c = 0;
        for (; c < nv; c += KW) {
            KV a = KLOAD(acc + c);
            a += s0 * KLOAD(r0 + c);
            a += s1 * KLOAD(r1 + c);
            a += s2 * KLOAD(r2 + c);
            a += s3 * KLOAD(r3 + c);
            KSTORE(acc + c, a);
        }
        for (; c < n; ++c) acc[c] += s0 * r0[c] + s1 * r1[c] + s2 * r2[c] + s3 * r3[c];
    }
    for (; k < nk; ++k) {
        const float *r0 = base + idx[k] * ld;
        const float s0 = xv[k];
        int64_t c = 0;
        for (; c < nv; c += KW) KSTORE(acc + c, KLOAD(acc + c) + s0 * KLOAD(r0 + c));
        for (; c < n; ++c) acc[c] += s0 * r0[c];
    }
}

/*
 * Same as cols_b1 for B tokens sharing one union of kept rows: every weight vector is loaded once and
 * used by all B tokens, so the weight traffic is that of one token.
 */
KTARGET static void KNAME(cols_bn)(const float *wt, int64_t ld, const int32_t *idx, const float *xv,
                                   int64_t nk, int B, int64_t c0, int64_t n, float *y, int64_t y_ld) {
    const int64_t nv = n / KW * KW;
    const float *base = wt + c0;
    int64_t k = 0;
    for (; k + 4 <= nk; k += 4) {
        const float *r0 = base + idx[k] * ld, *r1 = base + idx[k + 1] * ld;
        const float *r2 = base + idx[k + 2] * ld, *r3 = base + idx[k + 3] * ld;
        const float *s0 = xv + k * B, *s1 = s0 + B, *s2 = s1 + B, *s3 = s2 + B;
        int64_t c = 0;
        for (; c < nv; c += KW) {
            const KV w0 = KLOAD(r0 + c), w1 = KLOAD(r1 + c), w2 = KLOAD(r2 + c), w3 = KLOAD(r3 + c);
            for (int b = 0; b < B; ++b) {
                float *acc = y + b * y_ld + c;
                KSTORE(acc, KLOAD(acc) + s0[b] * w0 + s1[b] * w1 + s2[b] * w2 + s3[b] * w3);
            }
        }
        for (; c < n; ++c)
            for (int b = 0; b < B; ++b)
                y[b * y_ld + c] += s0[b] * r0[c] + s1[b] * r1[c] + s2[b] * r2[c] + s3[b] * r3[c];
    }
    for (; k < nk; ++k) {
        const float *r0 = base + idx[k] * ld;
        const float *s0 = xv + k * B;
        int64_t c = 0;
        for (; c < nv; c += KW) {
            const KV w0 = KLOAD(r0 + c);
            for (int b = 0; b < B; ++b) {
                float *acc = y + b * y_ld + c;
                KSTORE(acc, KLOAD(acc) + s0[b] * w0);
            }
        }
        for (; c < n; ++c)
            for (int b = 0; b < B; ++b) y[b * y_ld + c] += s0[b] * r0[c];
    }
}

KTARGET static float KNAME(hsum)(KV v) {
    float s = 0.0f;
    for (int64_t i = 0; i < KW; ++i) s += v[i];
    return s;
}

/*
 * Row-sparse output (the up projection of the gated MLP): out[r*B+b] = dot(w[rows[r]*ld, :n], x_b) for
 * the listed rows only. The weight is row-major, so each kept row is one contiguous read. Four rows are
 * read side by side: a single sequential stream leaves the memory system mostly idle (7.5 GB/s measured
 * on one core, against ~25 GB/s for four). Tokens after the first re-read the four rows from L2.
 */
KTARGET static void KNAME(dots)(const float *w, int64_t ld, const int32_t *rows, int64_t nr,
                                const float *x, int64_t x_ld, int B, int64_t n, float *out) {
    const int64_t nv = n / KW * KW;
    int64_t r = 0;
    for (; r + 4 <= nr; r += 4) {
        const float *w0 = w + rows[r] * ld, *w1 = w + rows[r + 1] * ld;
        const float *w2 = w + rows[r + 2] * ld, *w3 = w + rows[r + 3] * ld;
        for (int b = 0; b < B; ++b) {
            const float *xb = x + (int64_t)b * x_ld;
            KV a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            int64_t c = 0;
            for (; c < nv; c += KW) {
                const KV xv = KLOAD(xb + c);
                a0 += KLOAD(w0 + c) * xv;
                a1 += KLOAD(w1 + c) * xv;
                a2 += KLOAD(w2 + c) * xv;
                a3 += KLOAD(w3 + c) * xv;
            }
            float s0 = KNAME(hsum)(a0), s1 = KNAME(hsum)(a1), s2 = KNAME(hsum)(a2), s3 = KNAME(hsum)(a3);
            for (; c < n; ++c) {
                s0 += w0[c] * xb[c];
                s1 += w1[c] * xb[c];
                s2 += w2[c] * xb[c];
                s3 += w3[c] * xb[c];
            }
            out[r * B + b] = s0;
            out[(r + 1) * B + b] = s1;
            out[(r + 2) * B + b] = s2;
            out[(r + 3) * B + b] = s3;
        }
    }
    for (; r < nr; ++r) {
        const float *w0 = w + rows[r] * ld;
        for (int b = 0; b < B; ++b) {
            const float *xb = x + (int64_t)b * x_ld;
            KV a0 = {0};
            int64_t c = 0;
            for (; c < nv; c += KW) a0 += KLOAD(w0 + c) * KLOAD(xb + c);
            float s0 = KNAME(hsum)(a0);
            for (; c < n; ++c) s0 += w0[c] * xb[c];
            out[r * B + b] = s0;
        }
    }
}

#undef KCAT2
#undef KCAT
#undef KNAME
#undef KV
#undef KVU
#undef KW
#undef KLOAD
#undef KSTORE
