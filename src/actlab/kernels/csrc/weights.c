/*
 * Sparse-input GEMV over the weight formats of weights.h. F32 goes to the fp32 kernels of sparse_gemv.c;
 * BF16, Q8 and Q4 run the loops of weights_kernel.h (instantiated below per instruction set, dispatched by
 * the same actlab_get_isa()/actlab_set_isa() as the fp32 kernels), with the row selection, column
 * blocking and threading of sparse_gemv.c (actlab__select_rows, actlab__run_blocks).
 */
#include "weights.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "sparse_gemv_internal.h"

/* IEEE half bits to float; exact for normals and subnormals (scales are finite by construction). */
static inline float actlab__h2f(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v;
    const uint32_t em = h & 0x7fffu;
    v.u = em << 13;
    v.f *= 0x1p112f; /* rebias the exponent (15 -> 127); also scales subnormals exactly */
    if (em >= 0x7c00u) v.u |= 0x7f800000u;
    v.u |= (uint32_t)(h & 0x8000u) << 16;
    return v.f;
}

static inline float actlab__bf16(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v = {.u = (uint32_t)h << 16};
    return v.f;
}

#define KSUFFIX generic
#define KTARGET
#define KVBYTES 16
#include "weights_kernel.h"
#undef KSUFFIX
#undef KTARGET
#undef KVBYTES

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(ACTLAB_PORTABLE_ONLY)
#define ACTLAB_X86 1
#include <immintrin.h>

#define KSUFFIX avx2
#define KTARGET __attribute__((target("avx2,fma,f16c")))
#define KVBYTES 32
#define KWIDEN_I8(p) _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p)))
#define KWIDEN_U8(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p)))
#define KH2FV(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#include "weights_kernel.h"
#undef KSUFFIX
#undef KTARGET
#undef KVBYTES
#undef KWIDEN_I8
#undef KWIDEN_U8
#undef KH2FV

#define KSUFFIX avx512
#define KTARGET __attribute__((target("avx512f,avx512bw,avx2,fma,f16c")))
#define KVBYTES 64
#define KWIDEN_I8(p) _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define KWIDEN_U8(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define KH2FV(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(p)))
#include "weights_kernel.h"
#undef KSUFFIX
#undef KTARGET
#undef KVBYTES
#undef KWIDEN_I8
#undef KWIDEN_U8
#undef KH2FV

#include "weights_vnni.h"
#else
int actlab_set_int8_dot(int on) {
    (void)on;
    return 0;
}
#endif

int actlab_int8_dot_active(void) {
#ifdef ACTLAB_X86
    return g_int8_dot && actlab_get_isa() == ACTLAB_ISA_AVX512 && vnni_supported();
#else
    return 0;
#endif
}

typedef void (*wcols_fn)(const actlab_wmat *w, const int32_t *idx, const float *xv, int64_t xs, int64_t nk,
                         int nb, int64_t c0, int64_t n, float *acc, int64_t acc_ld, float *tmp, int64_t tld);

/* [isa][fmt - BF16] */
static wcols_fn wkernel(actlab_fmt fmt) {
    static const wcols_fn generic[3] = {bf16_cols_generic, q8_cols_generic, q4_cols_generic};
#ifdef ACTLAB_X86
    static const wcols_fn avx2[3] = {bf16_cols_avx2, q8_cols_avx2, q4_cols_avx2};
    static const wcols_fn avx512[3] = {bf16_cols_avx512, q8_cols_avx512, q4_cols_avx512};
    const actlab_isa isa = actlab_get_isa();
    /* f16c (scale conversion) and avx512bw come with avx2 / avx512f on every CPU that has shipped;
     * checked anyway, falling back to the generic loops */
    if (fmt != ACTLAB_FMT_BF16 && actlab_int8_dot_active()) return fmt == ACTLAB_FMT_Q8 ? q8_cols_vnni : q4_cols_vnni;
    if (__builtin_cpu_supports("f16c")) {
        if (isa == ACTLAB_ISA_AVX512 && __builtin_cpu_supports("avx512bw")) return avx512[fmt - ACTLAB_FMT_BF16];
        if (isa == ACTLAB_ISA_AVX512 || isa == ACTLAB_ISA_AVX2) return avx2[fmt - ACTLAB_FMT_BF16];
    }
#endif
    return generic[fmt - ACTLAB_FMT_BF16];
}

int actlab_valid_wmat(const actlab_wmat *w) {
    if (w == NULL || w->rows < 0 || w->cols < 0 || w->ld < w->cols || w->rows >= INT32_MAX) return 0;
    const int empty = w->rows == 0 || w->cols == 0;
    if (w->data == NULL && !empty) return 0;
    switch (w->fmt) {
    case ACTLAB_FMT_F32:
    case ACTLAB_FMT_BF16: return 1;
    case ACTLAB_FMT_Q8:
    case ACTLAB_FMT_Q4: {
        const int q4 = w->fmt == ACTLAB_FMT_Q4;
        if (w->group <= 0 || w->ld % (q4 ? 32 : 16) != 0) return 0; /* the vector loops' (and nibble pairs') unit */
        if (w->scale_ld < (q4 ? 2 : 1) * w->ld || (w->scales == NULL && !empty)) return 0;
        return 1;
    }
    }
    return 0;
}

static int wblock(wcols_fn fn, const actlab_wmat *w, const int32_t *idx, const float *xv, int64_t nk, int B,
                  const float *bias, float *y, int64_t y_ld, int64_t c0, int64_t c1) {
    const int64_t n = c1 - c0;
    const int64_t ld = actlab__padded_ld(n);
    const int nb_max = B < 8 ? B : 8, scaled = w->fmt == ACTLAB_FMT_Q8 || w->fmt == ACTLAB_FMT_Q4;
    /* one allocation: the accumulators of B > 1 tokens, then the per-block sums of int8/int4 */
    const int64_t acc_n = B == 1 ? 0 : B * ld, tmp_n = scaled ? nb_max * ld : 0;
    float *buf = acc_n + tmp_n ? malloc((size_t)(acc_n + tmp_n) * sizeof(float)) : NULL;
    if (acc_n + tmp_n && buf == NULL) return 0;
    float *acc = B == 1 ? y + c0 : buf, *tmp = buf ? buf + acc_n : NULL;
    const int64_t acc_ld = B == 1 ? y_ld : ld;
    for (int b = 0; b < B; ++b) {
        if (bias) memcpy(acc + b * acc_ld, bias + c0, (size_t)n * sizeof(float));
        else memset(acc + b * acc_ld, 0, (size_t)n * sizeof(float));
    }
    for (int b0 = 0; b0 < B; b0 += 8) /* at most 8 tokens share one pass over the rows */
        fn(w, idx, xv + b0, B, nk, B - b0 < 8 ? B - b0 : 8, c0, n, acc + b0 * acc_ld, acc_ld, tmp, ld);
    if (B > 1)
        for (int b = 0; b < B; ++b) memcpy(y + b * y_ld + c0, acc + b * ld, (size_t)n * sizeof(float));
    free(buf);
    return 1;
}

typedef struct {
    wcols_fn fn;
    const actlab_wmat *w;
    const int32_t *idx;
    const float *xv;
    int64_t nk;
    int B;
    const float *bias;
    float *y;
    int64_t y_ld;
} wblock_ctx;

static int wblock_fn(const void *p, int64_t c0, int64_t c1) {
    const wblock_ctx *c = p;
    return wblock(c->fn, c->w, c->idx, c->xv, c->nk, c->B, c->bias, c->y, c->y_ld, c0, c1);
}

/* Column blocks and threads as the fp32 kernels (actlab__run_blocks), in units of 64 columns. */
static int run_cols_w(const actlab_wmat *w, const int32_t *idx, const float *xv, int64_t nk, int B,
                      const float *bias, float *y, int64_t y_ld, int num_threads) {
    const int64_t out = w->cols, unit = 64; /* the int8-dot loops' chunk */
    /* bytes per kept row, a block's scale row (and minimum row) shared by its group of rows */
    const int64_t row_bytes = w->fmt == ACTLAB_FMT_Q4 ? out / 2 + 4 * out / w->group
                              : w->fmt == ACTLAB_FMT_Q8 ? out + 2 * out / w->group
                                                        : 2 * out;
    int nt = actlab__resolve_threads(num_threads, nk * row_bytes);
    if (nt > (out + unit - 1) / unit) nt = (int)((out + unit - 1) / unit);
    if (nt < 1) nt = 1;
    const wblock_ctx ctx = {wkernel(w->fmt), w, idx, xv, nk, B, bias, y, y_ld};
    const int ok = actlab__run_blocks(nt, out, actlab__block_width(out, nt, B, unit), wblock_fn, &ctx);
    return ok ? ACTLAB_OK : ACTLAB_ERR_NOMEM;
}

int actlab_sparse_linear_w(actlab_mat x, const actlab_wmat *wt, actlab_thr thr, const float *bias, float *y,
                           int64_t y_ld, int num_threads) {
    if (!actlab_valid_wmat(wt)) return ACTLAB_ERR_ARGS;
    if (thr.data == NULL) {
        static const float keep_all = -1.0f; /* |x| > -1 keeps every input but NaN */
        thr = (actlab_thr){&keep_all, 0};
    }
    if (wt->fmt == ACTLAB_FMT_F32) {
        const actlab_mat wm = {(const float *)wt->data, wt->rows, wt->cols, wt->ld};
        return actlab_sparse_linear(x, wm, thr, bias, y, y_ld, num_threads);
    }
    if (!actlab__valid_mat(x) || x.cols != wt->rows || x.cols >= INT32_MAX) return ACTLAB_ERR_ARGS;
    if (x.rows == 0 || wt->cols == 0) return ACTLAB_OK;
    if (y == NULL || y_ld < wt->cols || x.rows > INT32_MAX) return ACTLAB_ERR_ARGS;
    const int B = (int)x.rows;
    int32_t *idx = malloc((size_t)(x.cols + 1) * sizeof(int32_t));
    float *xv = malloc((size_t)(x.cols * B + 1) * sizeof(float));
    if (!idx || !xv) {
        free(idx);
        free(xv);
        return ACTLAB_ERR_NOMEM;
    }
    const int64_t nk = actlab__select_rows(x, thr, idx, xv, NULL);
    const int status = run_cols_w(wt, idx, xv, nk, B, bias, y, y_ld, num_threads);
    free(idx);
    free(xv);
    return status;
}
