/*
 * Gated MLP with a row-sparse up projection (CATS/CHESS style); semantics in sparse_gemv.h.
 * Weight bytes read per token: all of W_gate (or its kept input rows), then only the kept neurons' rows
 * of W_up and of W_down^T, which is where the saving over three dense GEMVs comes from.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sparse_gemv_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int check_shapes(const actlab_gated_mlp *m, actlab_mat x) {
    const int64_t dm = x.cols, dff = m->wg_t.cols;
    return actlab__valid_mat(x) && actlab__valid_mat(m->wg_t) && actlab__valid_mat(m->wu) &&
           actlab__valid_mat(m->wd_t) && m->wg_t.rows == dm && m->wu.rows == dff && m->wu.cols == dm &&
           m->wd_t.rows == dff && m->wd_t.cols == dm && x.rows <= 1 << 20 && dff < INT32_MAX &&
           dm < INT32_MAX; /* kept inputs and neurons are stored as int32 indices */
}

/* u[r*B+b] = dot(wu[jidx[r], :], xm_b) + bu, for the kept neurons only, split over threads by rows. */
static void up_rows(const kernel_table *kt, const actlab_gated_mlp *m, const int32_t *jidx, int64_t nr,
                    const float *xm, int64_t dm, int B, float *u, int num_threads) {
    const int nt = actlab__resolve_threads(num_threads, nr * dm * (int64_t)sizeof(float));
    if (nt < 2) {
        kt->dots(m->wu.data, m->wu.ld, jidx, nr, xm, dm, B, dm, u);
    } else {
#ifdef _OPENMP
        /* row chunks handed out dynamically, so a thread the OS preempts leaves its share to the others */
        const int64_t chunk = 64, nchunks = (nr + chunk - 1) / chunk;
        double t0 = actlab__now(), t_caller_done = 0.0;
#pragma omp parallel num_threads(nt)
        {
#pragma omp for schedule(dynamic, 1) nowait
            for (int64_t c = 0; c < nchunks; ++c) {
                const int64_t r0 = c * chunk, r1 = r0 + chunk < nr ? r0 + chunk : nr;
                kt->dots(m->wu.data, m->wu.ld, jidx + r0, r1 - r0, xm, dm, B, dm, u + r0 * B);
            }
            if (omp_get_thread_num() == 0) t_caller_done = actlab__now();
        }
        const double t1 = actlab__now();
        actlab__guard_note(t1 - t_caller_done, t1 - t0);
#endif
    }
    if (m->bu)
        for (int64_t r = 0; r < nr; ++r)
            for (int b = 0; b < B; ++b) u[r * B + b] += m->bu[jidx[r]];
}

/* Scratch buffers of one forward call (sizes in elements). */
typedef struct {
    int32_t *idx_in; /* [dm] kept inputs */
    int32_t *jidx;   /* [dff] kept neurons */
    float *xv_in;    /* [dm, B] kept input values, compacted */
    float *xm;       /* [B, dm] masked x, dense, for the up dot products */
    float *g;        /* [B, dff] gate, then act(gate) */
    float *av;       /* [dff, B] kept activations, compacted */
    float *u;        /* [dff, B] up projection of kept neurons, then h */
    unsigned char *keep; /* [dff, B] whether token b keeps neuron k */
} scratch;

static int forward(const kernel_table *kt, const actlab_gated_mlp *m, actlab_mat x, float *y, int64_t y_ld,
                   int num_threads, const scratch *s) {
    const int B = (int)x.rows;
    const int64_t dm = x.cols, dff = m->wg_t.cols;

    /* gate: sparse-input GEMV over the input mask; act is applied by each thread on its own slice */
    const int64_t nk_in = actlab__select_rows(x, m->t_in, s->idx_in, s->xv_in, NULL);
    memset(s->xm, 0, (size_t)(B * dm) * sizeof(float));
    for (int64_t k = 0; k < nk_in; ++k)
        for (int b = 0; b < B; ++b) s->xm[b * dm + s->idx_in[k]] = s->xv_in[k * B + b];
    int status = actlab__run_cols(kt, m->wg_t, s->idx_in, s->xv_in, nk_in, B, m->bg, s->g, dff, num_threads,
                                  &m->act);
    if (status != ACTLAB_OK) return status;

    /* neuron selection: union over tokens, each token keeps its own mask */
    const actlab_mat a = {s->g, B, dff, dff};
    const int64_t nr = actlab__select_rows(a, m->t_act, s->jidx, s->av, s->keep);

    up_rows(kt, m, s->jidx, nr, s->xm, dm, B, s->u, num_threads);

    /* h = a * up where the token keeps the neuron; where() semantics: a masked neuron is exactly 0 even
     * if its up value is inf/NaN. Then the optional down-input mask, compacting again. */
    int64_t nd = 0;
    for (int64_t r = 0; r < nr; ++r) {
        const float t = m->t_down.data ? m->t_down.data[s->jidx[r] * m->t_down.stride] : 0.0f;
        int any = 0;
        for (int b = 0; b < B; ++b) {
            const int kept = s->keep[r * B + b];
            const float h = kept ? s->av[r * B + b] * s->u[r * B + b] : 0.0f;
            const int k = m->t_down.data ? fabsf(h) > t : kept;
            s->u[nd * B + b] = k ? h : 0.0f;
            any |= k;
        }
        s->jidx[nd] = s->jidx[r];
        nd += any;
    }

    /* down: sparse-input GEMV over the kept neurons */
    return actlab__run_cols(kt, m->wd_t, s->jidx, s->u, nd, B, m->bd, y, y_ld, num_threads, NULL);
}

int actlab_gated_mlp_forward(const actlab_gated_mlp *m, actlab_mat x, float *y, int64_t y_ld,
                             int num_threads) {
    if (m == NULL || !check_shapes(m, x)) return ACTLAB_ERR_ARGS;
    const int B = (int)x.rows;
    const int64_t dm = x.cols, dff = m->wg_t.cols;
    if (B == 0 || dm == 0) return ACTLAB_OK;
    if (y == NULL || y_ld < dm) return ACTLAB_ERR_ARGS;

    /* one allocation per element type for every scratch buffer */
    int32_t *ibuf = malloc((size_t)(dm + dff + 2) * sizeof(int32_t));
    float *fbuf = malloc((size_t)(2 * B * dm + 3 * dff * B + 4) * sizeof(float));
    unsigned char *keep = malloc((size_t)(dff * B + 1));
    int status = ACTLAB_ERR_NOMEM;
    if (ibuf && fbuf && keep) {
        const scratch s = {
            .idx_in = ibuf, .jidx = ibuf + dm + 1, .xv_in = fbuf, .xm = fbuf + dm * B,
            .g = fbuf + 2 * dm * B, .av = fbuf + 2 * dm * B + dff * B, .u = fbuf + 2 * dm * B + 2 * dff * B,
            .keep = keep,
        };
        status = forward(actlab__kernels(), m, x, y, y_ld, num_threads, &s);
    }
    free(ibuf);
    free(fbuf);
    free(keep);
    return status;
}
