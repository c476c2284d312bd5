/*
 * Weight formats of the sparse-input kernels (fp32, bf16, int8 and int4 with fp16 group scales), torch-free.
 *
 * A weight is a row-major matrix [rows, cols] in one format. For the sparse-input GEMV it is the transposed
 * weight (rows = input channels, cols = outputs), so a kept input reads one packed row. Scales are shared by
 * a block of `group` consecutive rows (inputs), one per column (output), as llama.cpp's blocks run along
 * the inputs: block rb = r / group holds scale row S = scales + rb * scale_ld (and for Q4 the minimum row
 * M = S + ld).
 *
 *   ACTLAB_FMT_F32   data: float    [rows][ld]
 *   ACTLAB_FMT_BF16  data: uint16_t [rows][ld]   bf16 bits (the top half of an fp32)
 *   ACTLAB_FMT_Q8    data: int8_t   [rows][ld]   w[r][c] = S[c] * q[r][c];            scale_ld >= ld
 *   ACTLAB_FMT_Q4    data: uint8_t  [rows][ld/2] w[r][c] = S[c] * nibble + M[c];       scale_ld >= 2 * ld
 *                    in each chunk of 32 columns, byte j holds column j (low nibble) and column j + 16 (high)
 * ld counts elements (columns), not bytes, and is a multiple of 16 (Q8) or 32 (Q4); scales are IEEE fp16
 * bits, ceil(rows / group) blocks of them, NULL for F32/BF16.
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
    int32_t group; /* rows (inputs) per block of scales (Q8, Q4); 0 otherwise */
} actlab_wmat;

/* y[b, :cols] = bias + sum_{i kept} xm[b, i] * w[i, :] for a transposed weight w = wt [in, out] in any
 * format; thr.data NULL keeps every input (a dense GEMV through the same kernel). Semantics as
 * actlab_sparse_linear. Returns ACTLAB_OK, ACTLAB_ERR_ARGS or ACTLAB_ERR_NOMEM. */
int actlab_sparse_linear_w(actlab_mat x, const actlab_wmat *wt, actlab_thr thr, const float *bias, float *y,
                           int64_t y_ld, int num_threads);

/* int8 and int4 on a CPU with AVX-512 VNNI (and the avx512 ISA selected) take integer dot products, as
 * llama.cpp does: each block's kept activations rounded to int8 (an error of at most dx / 2 per value,
 * dx = the block's max |x| / 127). actlab_set_int8_dot(0) keeps the float loops (exact products);
 * on < 0 only reads. Both return the previous setting. */
int actlab_set_int8_dot(int on);
int actlab_int8_dot_active(void);

/* Whether a struct is consistent (format known, ld/group/scale_ld fit cols, pointers present). The
 * caller guarantees ceil(rows / group) blocks of scale_ld scales behind `scales`. */
int actlab_valid_wmat(const actlab_wmat *w);

#ifdef __cplusplus
}
#endif

#endif /* ACTLAB_WEIGHTS_H */
