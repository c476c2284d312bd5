/*
 * Internals shared by sparse_gemv.c and gated_mlp.c; not part of the public C API. Hidden visibility
 * keeps them out of the extension's exported symbols.
 */
#ifndef ACTLAB_SPARSE_GEMV_INTERNAL_H
#define ACTLAB_SPARSE_GEMV_INTERNAL_H

#include "sparse_gemv.h"

#if defined(__GNUC__) || defined(__clang__)
#define ACTLAB_INTERNAL __attribute__((visibility("hidden")))
#else
#define ACTLAB_INTERNAL
#endif

/* Inner loops for one instruction set (see sparse_gemv_kernel.h for what each computes). */
typedef struct {
    void (*cols_b1)(const float *wt, int64_t ld, const int32_t *idx, const float *xv, int64_t nk,
                    int64_t c0, int64_t nc, float *y);
    void (*cols_bn)(const float *wt, int64_t ld, const int32_t *idx, const float *xv, int64_t nk, int B,
                    int64_t c0, int64_t nc, float *y, int64_t y_ld);
    void (*dots)(const float *w, int64_t ld, const int32_t *rows, int64_t nr, const float *x,
                 int64_t x_ld, int B, int64_t n, float *out);
} kernel_table;

ACTLAB_INTERNAL const kernel_table *actlab__kernels(void);

/* Rows any token keeps: idx[k], xv[k*B+b] (masked value), keep[k*B+b] (may be NULL); returns the count.
 * idx needs x.cols entries, xv and keep x.cols * x.rows. */
ACTLAB_INTERNAL int64_t actlab__select_rows(actlab_mat x, actlab_thr thr, int32_t *idx, float *xv,
                                            unsigned char *keep);

ACTLAB_INTERNAL float actlab__apply_act(actlab_act act, float v);

/* Threads for a call that reads `bytes` of weights: 1 below actlab__parallel_min_bytes(), else
 * num_threads (<= 0: the OpenMP default). */
ACTLAB_INTERNAL int64_t actlab__parallel_min_bytes(void);
ACTLAB_INTERNAL int actlab__resolve_threads(int num_threads, int64_t bytes);

/* The load guard (load_guard.c): whether this call must run on one thread because other processes hold
 * the cores (consumes one serial call), and the report every parallel call makes of how long its calling
 * thread waited for the others at the end, out of its whole duration. */
ACTLAB_INTERNAL int actlab__guard_serial(void);
ACTLAB_INTERNAL void actlab__guard_note(double waited_s, double total_s);
ACTLAB_INTERNAL double actlab__now(void);

/* y[b, :] = bias + sum_k xv[k*B+b] * wt[idx[k], :], then act in place if act is not NULL.
 * Returns ACTLAB_OK or ACTLAB_ERR_NOMEM. */
ACTLAB_INTERNAL int actlab__run_cols(const kernel_table *kt, actlab_mat wt, const int32_t *idx,
                                      const float *xv, int64_t nk, int B, const float *bias, float *y,
                                      int64_t y_ld, int num_threads, const actlab_act *act);

/* Column blocks of [0, out) of width bw (the last one shorter) through fn(ctx, c0, c1) on nt threads,
 * dynamically scheduled, the load guard told how long the caller waited; returns 0 if any fn did. */
typedef int (*actlab__block_fn)(const void *ctx, int64_t c0, int64_t c1);
ACTLAB_INTERNAL int actlab__run_blocks(int nt, int64_t out, int64_t bw, actlab__block_fn fn, const void *ctx);
/* Block width for out columns, nt threads and B tokens: a multiple of unit (see sparse_gemv.c). */
ACTLAB_INTERNAL int64_t actlab__block_width(int64_t out, int nt, int B, int64_t unit);

ACTLAB_INTERNAL int actlab__valid_mat(actlab_mat m);

/* Row stride of a private B-token accumulator for n columns, off the 4 KiB stride that aliases L1 sets. */
ACTLAB_INTERNAL int64_t actlab__padded_ld(int64_t n);

#endif /* ACTLAB_SPARSE_GEMV_INTERNAL_H */
