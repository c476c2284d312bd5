/*
 * Native decode step (issue 12): the whole layer loop of a llama-family decoder for one token in one C
 * call, batch 1. Every weight product goes through actlab_sparse_linear_w (any weight format of
 * weights.h, a plan's thresholds or none) or, for a CATS/CHESS MLP, actlab_gated_mlp_forward; norms,
 * rotary, the KV cache and attention are plain single-threaded loops (tiny next to the weights).
 *
 * Per layer:  xn = rms(h) * w_attn;  [q|k|v] = projections(xn);  q, k: optional per-head rms (qwen3),
 *             rotary from the caller's cos/sin tables (HF's rotate_half convention); k, v -> cache[pos];
 *             attn = softmax(q k^T * scale) v over positions 0..pos (GQA);  h += o(attn);
 *             xn = rms(h) * w_mlp;  h += down(act(gate(xn)) * up(xn))   (or the fused gated MLP)
 * Then logits = lm_head(rms(h) * w_final) and the argmax (first index of the maximum).
 * The caller owns every pointer's memory; the decoder owns only its scratch.
 */
#ifndef ACTLAB_DECODE_H
#define ACTLAB_DECODE_H

#include <stdint.h>

#include "weights.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One weight product: y[y_off : y_off + w.cols] = bias + mask(x, thr) @ w. */
typedef struct {
    actlab_wmat w;
    actlab_thr thr; /* data NULL: dense */
    const float *bias;
    int64_t y_off;
} actlab_dec_proj;

typedef struct {
    const float *attn_norm, *mlp_norm; /* [d_model] */
    const float *q_norm, *k_norm;      /* [head_dim] or NULL */
    int n_qkv;
    actlab_dec_proj qkv[3]; /* written into one buffer; q, k, v start at q_off, k_off, v_off */
    int64_t q_off, k_off, v_off;
    actlab_dec_proj o;
    int has_mlp;          /* 1: the fused gated-MLP kernel is the whole MLP (gu, down unused) */
    actlab_gated_mlp mlp;
    int n_gu;
    actlab_dec_proj gu[2];
    int64_t gate_off, up_off;
    actlab_dec_proj down;
    float *k_cache, *v_cache; /* [n_kv_heads][max_len][head_dim] */
} actlab_dec_layer;

typedef struct {
    int64_t n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff, vocab, max_len;
    float eps, qk_eps, scale;
    actlab_act act;
    const float *embed;      /* [vocab][d_model] */
    const float *cos, *sin;  /* [max_len][head_dim] */
    const float *final_norm; /* [d_model] */
    actlab_dec_proj lm_head;
    actlab_dec_layer *layers; /* [n_layers], malloc'ed by the caller, freed by actlab_decoder_free */
    int64_t qkv_cols, gu_cols; /* widths of the q|k|v and gate|up buffers */
    float *scratch;            /* owned, allocated by actlab_decoder_init */
} actlab_decoder;

/* Checks the description and allocates the scratch (once). Returns ACTLAB_OK, ACTLAB_ERR_ARGS or
 * ACTLAB_ERR_NOMEM; on error nothing is left allocated. */
int actlab_decoder_init(actlab_decoder *d);
void actlab_decoder_free(actlab_decoder *d);

/* One token at position pos (0 <= pos < max_len, cache slots < pos already written): writes its K/V at
 * slot pos, stores the argmax in *next and, if logits is not NULL, the vocab logits there. */
int actlab_decode_step(actlab_decoder *d, int64_t token, int64_t pos, float *logits, int num_threads,
                       int64_t *next);

#ifdef __cplusplus
}
#endif

#endif /* ACTLAB_DECODE_H */
