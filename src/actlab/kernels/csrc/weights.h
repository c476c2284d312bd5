/*
 * Weight formats of the sparse-input kernels (fp32, bf16, int8 and int4 with fp16 group scales), torch-free.
 *
 * A weight is a row-major matrix [rows, cols] in one format. For the sparse-input GEMV it is the transposed
 * weight (rows = input channels, cols = outputs), so a kept input reads one packed row and its scale row;
 * the groups that share a scale then run along the output dimension. The same struct describes a row-major
 * [d_ff, d_model] up projection (groups along the input dimension) for row-sparse dot products.
 *
 *   ACTLAB_FMT_F32   data: float    [rows][ld]
 *   ACTLAB_FMT_BF16  data: uint16_t [rows][ld]   bf16 bits (the top half of an fp32)
 *   ACTLAB_FMT_Q8    data: int8_t   [rows][ld]   w[r][c] = scales[r * scale_ld + c / group] * q[r][c]
 *   ACTLAB_FMT_Q4    data: uint8_t  [rows][ld/2] w[r][c] = scales[r * scale_ld + c / group] * (nibble - 8);
 *                    within a group, byte j holds column j (low nibble) and column j + group/2 (high)
 * ld counts elements (columns), not bytes; scales are IEEE fp16 bits, NULL for F32/BF16.
 */
#ifndef ACTLAB_WEIGHTS_H
#define ACTLAB_WEIGHTS_H

#include <stdint.h>

#include "sparse_gemv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Values are part of the Python ABI: do not renumber. */
typedef enum { ACTLAB_FMT_F32 = 0, ACTLAB_FMT_BF16 = 1, ACTLAB_FMT_Q8 = 2, ACTLAB_FMT_Q4 = 3 } actlab_fmt;

typedef struct {
    actlab_fmt fmt;
    const void *data;
    int64_t rows, cols, ld;
    const uint16_t *scales; /* fp16 bits, [rows][scale_ld]; NULL for F32 and BF16 */
    int64_t scale_ld;
    int32_t group; /* columns per scale (Q8, Q4); 0 otherwise */
} actlab_wmat;

/* y[b, :cols] = bias + sum_{i kept} xm[b, i] * w[i, :] for a transposed weight w = wt [in, out] in any
 * format; thr.data NULL keeps every input (a dense GEMV through the same kernel). Semantics as
 * actlab_sparse_linear. Returns ACTLAB_OK, ACTLAB_ERR_ARGS or ACTLAB_ERR_NOMEM. */
int actlab_sparse_linear_w(actlab_mat x, const actlab_wmat *wt, actlab_thr thr, const float *bias, float *y,
                           int64_t y_ld, int num_threads);

/* Whether a struct is consistent (format known, ld/group/scale_ld fit cols, pointers present). */
int actlab_valid_wmat(const actlab_wmat *w);

#ifdef __cplusplus
}
#endif

#endif /* ACTLAB_WEIGHTS_H */
