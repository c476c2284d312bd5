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
#define KLINE ((int64_t)16)              /* floats per 64-byte cache line */
#define KLOAD(p) (*(const KVU *)(p))
#define KSTORE(p, v) (*(KVU *)(p) = (v))

typedef float KV __attribute__((vector_size(KVBYTES)));
/* aligned(4) makes dereferences unaligned loads/stores: weight rows are only float-aligned. */
typedef float KVU __attribute__((vector_size(KVBYTES), aligned(4), may_alias));

/*
 * y[c] += sum_k xv[k] * wt[idx[k]*ld + c0 + c] for c in [0, n), one token. The caller keeps n to one
 * column block so this slice of y stays in cache while the weight rows stream past it; four rows are
 * folded into each load/store of the accumulator.
 */
KTARGET static void KNAME(cols_b1)(const float *wt, int64_t ld, const int32_t *idx, const float *xv,
                                   int64_t nk, int64_t c0, int64_t n, float *y) {
    const int64_t nv = n / KW * KW;
    float *acc = y;
    const float *base = wt + c0;
    int64_t k = 0;
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
 * the listed rows only. The weight is row-major, so each kept row is one contiguous read.
 */
KTARGET static void KNAME(dots)(const float *w, int64_t ld, const int32_t *rows, int64_t nr,
                                const float *x, int64_t x_ld, int B, int64_t n, float *out) {
    const int64_t nv = n / KW * KW;
    for (int64_t r = 0; r < nr; ++r) {
        const float *row = w + rows[r] * ld;
        const float *next = w + rows[r + 1 < nr ? r + 1 : r] * ld;
        for (int b0 = 0; b0 < B; b0 += 4) {
            /* up to four tokens per pass keeps the accumulators in registers; the row is re-read
             * from L1 for the next four */
            const int nb = B - b0 < 4 ? B - b0 : 4;
            const float *x0 = x + (int64_t)b0 * x_ld;
            KV a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            int64_t c = 0;
            if (nb == 1) {
                /* one token: four independent accumulators hide the FMA latency */
                for (; c + 4 * KW <= nv; c += 4 * KW) {
                    if (b0 == 0) __builtin_prefetch(next + c, 0, ACTLAB_PF_LOCALITY);
                    a0 += KLOAD(row + c) * KLOAD(x0 + c);
                    a1 += KLOAD(row + c + KW) * KLOAD(x0 + c + KW);
                    a2 += KLOAD(row + c + 2 * KW) * KLOAD(x0 + c + 2 * KW);
                    a3 += KLOAD(row + c + 3 * KW) * KLOAD(x0 + c + 3 * KW);
                }
                for (; c < nv; c += KW) a0 += KLOAD(row + c) * KLOAD(x0 + c);
                float s = KNAME(hsum)((a0 + a1) + (a2 + a3));
                for (; c < n; ++c) s += row[c] * x0[c];
                out[r * B + b0] = s;
                continue;
            }
            for (; c < nv; c += KW) {
                if (b0 == 0 && (c & (KLINE - 1)) == 0) __builtin_prefetch(next + c, 0, ACTLAB_PF_LOCALITY);
                const KV wv = KLOAD(row + c);
                a0 += wv * KLOAD(x0 + c);
                a1 += wv * KLOAD(x0 + x_ld + c);
                if (nb > 2) a2 += wv * KLOAD(x0 + 2 * x_ld + c);
                if (nb > 3) a3 += wv * KLOAD(x0 + 3 * x_ld + c);
            }
            float s[4] = {KNAME(hsum)(a0), KNAME(hsum)(a1), KNAME(hsum)(a2), KNAME(hsum)(a3)};
            for (; c < n; ++c)
                for (int b = 0; b < nb; ++b) s[b] += row[c] * x0[b * x_ld + c];
            for (int b = 0; b < nb; ++b) out[r * B + b0 + b] = s[b];
        }
    }
}

#undef KCAT2
#undef KCAT
#undef KNAME
#undef KV
#undef KVU
#undef KW
#undef KLINE
#undef KLOAD
#undef KSTORE
