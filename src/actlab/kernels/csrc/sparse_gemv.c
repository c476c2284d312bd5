/*
 * Sparse-input GEMV: row selection, threading and instruction-set dispatch. The inner loops live in
 * sparse_gemv_kernel.h, instantiated below once per instruction set. See sparse_gemv.h for semantics.
 */
#include "sparse_gemv_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/*
 * Upper bound on the columns of one block (64 KiB of y, in L2). Blocks exist only so very wide layers
 * keep their accumulator in cache: the reads are fastest when each kept row is one long contiguous run,
 * so a thread normally takes its whole share of the columns at once. Measured with paired runs on
 * 4096x11008 / 11008x4096 (1 thread): 1024 columns 25-40% slower, 2048 10-20% slower than 16384.
 * No software prefetch either: the hardware prefetchers follow the row runs on their own, and fetching
 * the next four rows ahead made it 8-16% slower on long rows and 3-10% slower even on 576-float rows.
 */
#ifndef ACTLAB_COL_BLOCK
#define ACTLAB_COL_BLOCK 16384
#endif
/* With B tokens the block holds B accumulator rows; keep them within L2 (floats, all tokens together). */
#ifndef ACTLAB_ACC_FLOATS
#define ACTLAB_ACC_FLOATS 16384
#endif

#define KSUFFIX generic
#define KTARGET
#define KVBYTES 16
#include "sparse_gemv_kernel.h"
#undef KSUFFIX
#undef KTARGET
#undef KVBYTES

/* ACTLAB_PORTABLE_ONLY builds just the generic path, as on a non-x86 target (used to test that build). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(ACTLAB_PORTABLE_ONLY)
#define ACTLAB_X86 1
#define KSUFFIX avx2
#define KTARGET __attribute__((target("avx2,fma")))
#define KVBYTES 32
#include "sparse_gemv_kernel.h"
#undef KSUFFIX
#undef KTARGET
#undef KVBYTES

#define KSUFFIX avx512
#define KTARGET __attribute__((target("avx512f,avx2,fma")))
#define KVBYTES 64
#include "sparse_gemv_kernel.h"
#undef KSUFFIX
#undef KTARGET
#undef KVBYTES
#endif


static const kernel_table k_generic = {cols_b1_generic, cols_bn_generic, dots_generic};
#ifdef ACTLAB_X86
static const kernel_table k_avx2 = {cols_b1_avx2, cols_bn_avx2, dots_avx2};
static const kernel_table k_avx512 = {cols_b1_avx512, cols_bn_avx512, dots_avx512};
#endif

/* Override set by actlab_set_isa (tests); AUTO means "detect". Not meant to change mid-computation. */
static actlab_isa g_isa_override = ACTLAB_ISA_AUTO;

static int isa_supported(actlab_isa isa) {
    switch (isa) {
    case ACTLAB_ISA_GENERIC: return 1;
#ifdef ACTLAB_X86
    case ACTLAB_ISA_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case ACTLAB_ISA_AVX512: return __builtin_cpu_supports("avx512f");
#endif
    default: return 0;
    }
}

actlab_isa actlab_get_isa(void) {
    if (g_isa_override != ACTLAB_ISA_AUTO) return g_isa_override;
    if (isa_supported(ACTLAB_ISA_AVX512)) return ACTLAB_ISA_AVX512;
    if (isa_supported(ACTLAB_ISA_AVX2)) return ACTLAB_ISA_AVX2;
    return ACTLAB_ISA_GENERIC;
}

int actlab_set_isa(actlab_isa isa) {
    if (isa != ACTLAB_ISA_AUTO && !isa_supported(isa)) return ACTLAB_ERR_ISA;
    g_isa_override = isa;
    return ACTLAB_OK;
}

const char *actlab_isa_name(actlab_isa isa) {
    static const char *names[] = {"auto", "generic", "avx2", "avx512"};
    return (unsigned)isa < 4 ? names[isa] : "unknown";
}

const kernel_table *actlab__kernels(void) {
    switch (actlab_get_isa()) {
#ifdef ACTLAB_X86
    case ACTLAB_ISA_AVX512: return &k_avx512;
    case ACTLAB_ISA_AVX2: return &k_avx2;
#endif
    default: return &k_generic;
    }
}

/*
 * Compacts the rows of x^T that any token keeps: idx[k] = i, xv[k*B+b] = masked x[b, i], keep[k*B+b] =
 * whether token b keeps it (keep may be NULL). Branch-free so random masks cost no mispredictions;
 * every store lands at index <= i, inside the buffers. No threshold (thr.data NULL) keeps everything.
 */
int64_t actlab__select_rows(actlab_mat x, actlab_thr thr, int32_t *idx, float *xv, unsigned char *keep) {
    const int64_t in = x.cols, B = x.rows;
    int64_t nk = 0;
    if (thr.data == NULL) {
        for (int64_t i = 0; i < in; ++i) {
            idx[i] = (int32_t)i;
            for (int64_t b = 0; b < B; ++b) xv[i * B + b] = x.data[b * x.ld + i];
        }
        if (keep) memset(keep, 1, (size_t)(in * B));
        return in;
    }
    if (B == 1 && keep == NULL) {
        for (int64_t i = 0; i < in; ++i) {
            const float v = x.data[i];
            idx[nk] = (int32_t)i;
            xv[nk] = v;
            nk += fabsf(v) > thr.data[i * thr.stride]; /* NaN compares false: masked */
        }
        return nk;
    }
    for (int64_t i = 0; i < in; ++i) {
        const float t = thr.data[i * thr.stride];
        int any = 0;
        for (int64_t b = 0; b < B; ++b) {
            const float v = x.data[b * x.ld + i];
            const int k = fabsf(v) > t;
            xv[nk * B + b] = k ? v : 0.0f;
            if (keep) keep[nk * B + b] = (unsigned char)k;
            any |= k;
        }
        idx[nk] = (int32_t)i;
        nk += any;
    }
    return nk;
}

float actlab__apply_act(actlab_act act, float v) {
    switch (act) {
    case ACTLAB_ACT_SILU: return v / (1.0f + expf(-v)); /* the formula torch uses: same inf/NaN cases */
    case ACTLAB_ACT_GELU_TANH: {
        const float k = 0.7978845608028654f; /* sqrt(2/pi) */
        return 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
    case ACTLAB_ACT_RELU: return v < 0.0f ? 0.0f : v; /* keeps NaN, as torch.relu does */
    }
    return v;
}

/*
 * Weight bytes a call must read before it is split over threads. Below this a parallel region costs more
 * (fork and join, a few microseconds) than the second core saves. 256 KiB is ~10 us of streaming on one core.
 * It was 4 MiB, chosen on a loaded 2-core box where a join could wait a whole scheduler slice; on idle
 * machines that left SmolLM2's 576x1536 layers on one core while torch's dense GEMV used two (measured at
 * 2 threads, 0% sparsity, 576x1536: 0.55x of dense on an Intel AVX-512 VM, 0.49x on an AMD one, where
 * 256 KiB gives 1.18x, and 2.07x on 1536x576).
 * On a machine shared with other jobs, pass fewer threads or raise ACTLAB_PARALLEL_MIN_BYTES.
 */
#define ACTLAB_PARALLEL_MIN_BYTES_DEFAULT (256 << 10)

static int64_t g_parallel_min_bytes = -1; /* -1: not read from the environment yet */

int64_t actlab__parallel_min_bytes(void) {
    if (g_parallel_min_bytes < 0) { /* racy first read is benign: every thread computes the same value */
        const char *env = getenv("ACTLAB_PARALLEL_MIN_BYTES");
        const int64_t v = env ? atoll(env) : ACTLAB_PARALLEL_MIN_BYTES_DEFAULT;
        g_parallel_min_bytes = v < 0 ? 0 : v;
    }
    return g_parallel_min_bytes;
}

int64_t actlab_set_parallel_min_bytes(int64_t bytes) {
    const int64_t old = actlab__parallel_min_bytes();
    g_parallel_min_bytes = bytes < 0 ? ACTLAB_PARALLEL_MIN_BYTES_DEFAULT : bytes;
    return old;
}

int actlab__resolve_threads(int num_threads, int64_t bytes) {
#ifdef _OPENMP
    if (bytes < actlab__parallel_min_bytes() || actlab__guard_serial()) return 1;
    return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
    (void)num_threads, (void)bytes;
    return 1;
#endif
}

/*
 * Accumulator row stride for B > 1 tokens: y's own row stride is often a multiple of 4 KiB (out = 4096
 * floats is 16 KiB), which puts every token's accumulator line in the same L1 set and thrashes it
 * (measured: 16 tokens on 4096x11008 took 6x longer than with padding). A private buffer padded by one
 * cache line per row breaks the aliasing.
 */
int64_t actlab__padded_ld(int64_t n) {
    int64_t ld = ((n + 15) & ~(int64_t)15) + 16;
    if ((ld * (int64_t)sizeof(float)) % 4096 == 0) ld += 16;
    return ld;
}

/* Block [c0, c1) of y = bias + sum_k xv[k] * wt[idx[k], :], optionally followed by act in place. Returns
 * 0 if the scratch accumulator could not be allocated. */
static int cols_block(const kernel_table *kt, actlab_mat wt, const int32_t *idx, const float *xv,
                      int64_t nk, int B, const float *bias, float *y, int64_t y_ld, int64_t c0, int64_t c1,
                      const actlab_act *act) {
    const int64_t n = c1 - c0;
    const int64_t ld = B == 1 ? y_ld : actlab__padded_ld(n);
    float *acc = B == 1 ? y + c0 : malloc((size_t)(B * ld) * sizeof(float));
    if (acc == NULL) return 0;
    for (int b = 0; b < B; ++b) {
        if (bias) memcpy(acc + b * ld, bias + c0, (size_t)n * sizeof(float));
        else memset(acc + b * ld, 0, (size_t)n * sizeof(float));
    }
    if (B == 1) kt->cols_b1(wt.data, wt.ld, idx, xv, nk, c0, n, acc);
    else kt->cols_bn(wt.data, wt.ld, idx, xv, nk, B, c0, n, acc, ld);
    for (int b = 0; b < B; ++b) {
        float *yb = y + b * y_ld + c0;
        if (B > 1) memcpy(yb, acc + b * ld, (size_t)n * sizeof(float));
        if (act)
            for (int64_t c = 0; c < n; ++c) yb[c] = actlab__apply_act(*act, yb[c]);
    }
    if (B > 1) free(acc);
    return 1;
}

/*
 * Block width for out columns on nt threads: the fewest blocks whose accumulators (B rows of y) fit in
 * ACTLAB_ACC_FLOATS, rounded up to a multiple of nt so threads get equal shares, each a whole number of
 * `unit` columns (16: a cache line of y, so no two threads write the same line; the weight formats pass
 * 32, their nibble chunk).
 */
int64_t actlab__block_width(int64_t out, int nt, int B, int64_t unit) {
    int64_t cap = ACTLAB_ACC_FLOATS / B;
    if (cap > ACTLAB_COL_BLOCK) cap = ACTLAB_COL_BLOCK;
    if (cap < 256) cap = 256;
    int64_t nblocks = (out + cap - 1) / cap;
    nblocks = (nblocks + nt - 1) / nt * nt;
    return ((out + nblocks - 1) / nblocks + unit - 1) / unit * unit;
}

int actlab__run_blocks(int nt, int64_t out, int64_t bw, actlab__block_fn fn, const void *ctx) {
    int ok = 1;
    if (nt < 2) {
        for (int64_t c0 = 0; c0 < out && ok; c0 += bw) ok = fn(ctx, c0, c0 + bw < out ? c0 + bw : out);
        return ok;
    }
#ifdef _OPENMP
    /* dynamic: a thread the OS preempts (a busy machine) does not hold up the others' blocks */
    const int64_t nblocks = (out + bw - 1) / bw;
    double t0 = actlab__now(), t_caller_done = 0.0;
#pragma omp parallel num_threads(nt) reduction(&& : ok)
    {
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t blk = 0; blk < nblocks; ++blk) {
            const int64_t c0 = blk * bw, c1 = c0 + bw < out ? c0 + bw : out;
            ok = fn(ctx, c0, c1) && ok;
        }
        if (omp_get_thread_num() == 0) t_caller_done = actlab__now();
    }
    const double t1 = actlab__now();
    actlab__guard_note(t1 - t_caller_done, t1 - t0);
#endif
    return ok;
}

typedef struct {
    const kernel_table *kt;
    actlab_mat wt;
    const int32_t *idx;
    const float *xv;
    int64_t nk;
    int B;
    const float *bias;
    float *y;
    int64_t y_ld;
    const actlab_act *act;
} cols_ctx;

static int cols_block_fn(const void *p, int64_t c0, int64_t c1) {
    const cols_ctx *c = p;
    return cols_block(c->kt, c->wt, c->idx, c->xv, c->nk, c->B, c->bias, c->y, c->y_ld, c0, c1, c->act);
}

int actlab__run_cols(const kernel_table *kt, actlab_mat wt, const int32_t *idx, const float *xv, int64_t nk,
                     int B, const float *bias, float *y, int64_t y_ld, int num_threads,
                     const actlab_act *act) {
    const int64_t out = wt.cols;
    int nt = actlab__resolve_threads(num_threads, nk * out * (int64_t)sizeof(float));
    if (nt > (out + 63) / 64) nt = (int)((out + 63) / 64);
    const cols_ctx ctx = {kt, wt, idx, xv, nk, B, bias, y, y_ld, act};
    const int ok = actlab__run_blocks(nt, out, actlab__block_width(out, nt, B, 16), cols_block_fn, &ctx);
    return ok ? ACTLAB_OK : ACTLAB_ERR_NOMEM;
}

int actlab__valid_mat(actlab_mat m) {
    /* empty matrices may have no storage at all */
    return (m.data != NULL || m.rows == 0 || m.cols == 0) && m.rows >= 0 && m.cols >= 0 && m.ld >= m.cols && m.rows < INT32_MAX;
}

int actlab_sparse_linear(actlab_mat x, actlab_mat wt, actlab_thr thr, const float *bias, float *y,
                         int64_t y_ld, int num_threads) {
    /* kept rows are stored as int32 indices */
    if (!actlab__valid_mat(x) || !actlab__valid_mat(wt) || x.cols != wt.rows || thr.data == NULL ||
        x.cols >= INT32_MAX)
        return ACTLAB_ERR_ARGS;
    if (x.rows == 0 || wt.cols == 0) return ACTLAB_OK;
    if (y == NULL || y_ld < wt.cols) return ACTLAB_ERR_ARGS;
    const int B = (int)x.rows;
    int32_t *idx = malloc((size_t)(x.cols + 1) * sizeof(int32_t));
    float *xv = malloc((size_t)(x.cols * B + 1) * sizeof(float));
    if (!idx || !xv) {
        free(idx);
        free(xv);
        return ACTLAB_ERR_NOMEM;
    }
    const int64_t nk = actlab__select_rows(x, thr, idx, xv, NULL);
    const int status = actlab__run_cols(actlab__kernels(), wt, idx, xv, nk, B, bias, y, y_ld, num_threads, NULL);
    free(idx);
    free(xv);
    return status;
}
