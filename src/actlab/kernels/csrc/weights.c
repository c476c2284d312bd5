/*
 * Sparse-input GEMV over the weight formats of weights.h. F32 goes to the fp32 kernels of sparse_gemv.c;
 * the other formats are being added (issue 12).
 */
#include "weights.h"

#include <stddef.h>

#include "sparse_gemv_internal.h"

int actlab_valid_wmat(const actlab_wmat *w) {
    if (w == NULL || w->rows < 0 || w->cols < 0 || w->ld < w->cols) return 0;
    if (w->data == NULL && w->rows > 0 && w->cols > 0) return 0;
    return w->fmt == ACTLAB_FMT_F32;
}

int actlab_sparse_linear_w(actlab_mat x, const actlab_wmat *wt, actlab_thr thr, const float *bias, float *y,
                           int64_t y_ld, int num_threads) {
    if (!actlab_valid_wmat(wt)) return ACTLAB_ERR_ARGS;
    const actlab_mat wm = {(const float *)wt->data, wt->rows, wt->cols, wt->ld};
    if (thr.data == NULL) {
        static const float keep_all = -1.0f; /* |x| > -1 keeps every input but NaN */
        thr = (actlab_thr){&keep_all, 0};
    }
    return actlab_sparse_linear(x, wm, thr, bias, y, y_ld, num_threads);
}
