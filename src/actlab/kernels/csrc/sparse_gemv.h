/*
 * actlab sparse-input GEMV core (fp32, torch-free).
 *
 * Single-token decoding is memory-bound: time ~ weight bytes read. With the weight stored transposed
 * (wt: in x out, row-major), an input x_i whose magnitude is not above its threshold t_i contributes
 * nothing, so row i of wt is never read:
 *
 *     y[b, :] = bias + sum_{i kept} xm[b, i] * wt[i, :]
 *     xm[b, i] = x[b, i] if |x[b, i]| > t_i else 0,    kept = { i : any_b |x[b, i]| > t_i }
 *
 * NaN inputs compare false and are therefore masked; +-inf is kept and propagates as in a dense matmul.
 * All functions are thread-safe and re-entrant; num_threads <= 0 means "OpenMP default".
 */
#ifndef ACTLAB_SPARSE_GEMV_H
#define ACTLAB_SPARSE_GEMV_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Activation applied to the gate of a gated MLP. Values are part of the Python ABI: do not renumber. */
typedef enum { ACTLAB_ACT_SILU = 0, ACTLAB_ACT_GELU_TANH = 1, ACTLAB_ACT_RELU = 2 } actlab_act;

/* Instruction-set paths. AUTO picks the widest the CPU supports. */
typedef enum { ACTLAB_ISA_AUTO = 0, ACTLAB_ISA_GENERIC = 1, ACTLAB_ISA_AVX2 = 2, ACTLAB_ISA_AVX512 = 3 } actlab_isa;

enum { ACTLAB_OK = 0, ACTLAB_ERR_NOMEM = -1, ACTLAB_ERR_ARGS = -2, ACTLAB_ERR_ISA = -3 };

/* Row-major fp32 matrix view: element (r, c) at data[r * ld + c]. */
typedef struct {
    const float *data;
    int64_t rows, cols, ld;
} actlab_mat;

/* Per-channel thresholds t_i = data[i * stride]; stride 0 broadcasts one scalar; data NULL = no mask. */
typedef struct {
    const float *data;
    int64_t stride;
} actlab_thr;

/* y[b, :out] for b < x.rows; x is [B, in], wt is [in, out]; bias may be NULL; y rows are y_ld apart. */
int actlab_sparse_linear(actlab_mat x, actlab_mat wt, actlab_thr thr, const float *bias, float *y,
                         int64_t y_ld, int num_threads);

/*
 * Gated MLP with a row-sparse up projection ("CATS/CHESS"):
 *   xm = mask(x, t_in)                     (t_in.data NULL: xm = x)
 *   a  = act(xm @ Wg^T + bg)               gate: sparse-input GEMV on wg_t [d_model, d_ff]
 *   am = mask(a, t_act)                    neuron j is kept where |a_j| > t_act_j
 *   h  = am * (xm @ Wu^T + bu) on kept j   up: dot products with rows of wu [d_ff, d_model] (row-major)
 *   hm = mask(h, t_down)                   optional second mask on the down projection's input
 *   y  = hm @ Wd^T + bd                    down: sparse-input GEMV on wd_t [d_ff, d_model]
 * Masked neurons contribute exactly zero (their up row is never read).
 */
typedef struct {
    actlab_mat wg_t, wu, wd_t;
    const float *bg, *bu, *bd; /* optional biases, NULL if absent */
    actlab_thr t_in, t_act, t_down;
    actlab_act act;
} actlab_gated_mlp;

int actlab_gated_mlp_forward(const actlab_gated_mlp *m, actlab_mat x, float *y, int64_t y_ld,
                             int num_threads);

/* Weight bytes a call must read before it uses more than one thread (default 256 KiB, or the environment
 * variable ACTLAB_PARALLEL_MIN_BYTES); a negative value restores the default. Returns the previous value. */
int64_t actlab_set_parallel_min_bytes(int64_t bytes);

/* The load guard (load_guard.c): on by default (ACTLAB_LOAD_GUARD=0 turns it off); set clears its state and
 * returns the previous setting; state reports it, the serial calls left, and how often it has switched to one thread. */
int actlab_set_load_guard(int on);
void actlab_load_guard_state(int *on, int64_t *serial_left, int64_t *switches);
/* One report of a parallel call: the calling thread waited waited_s at its end, of total_s (the kernels
 * report every parallel call; exposed so the policy can be tested). */
void actlab_guard_note(double waited_s, double total_s);

/* The path AUTO resolves to on this CPU, and an override (for tests); set returns ACTLAB_ERR_ISA if the
 * CPU or the build lacks it. */
actlab_isa actlab_get_isa(void);
int actlab_set_isa(actlab_isa isa);
const char *actlab_isa_name(actlab_isa isa);

#ifdef __cplusplus
}
#endif

#endif /* ACTLAB_SPARSE_GEMV_H */
