/*
 * Native decode step: one C call per token for the layer loop of llama-family models (issue 12).
 * See decode.h for the computation; numerics follow HF's fp32 modules (norms and softmax in fp32, the
 * same rotate_half rotary, keys/values cached after rotary).
 */
#include "decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sparse_gemv_internal.h"

static int proj_ok(const actlab_dec_proj *p, int64_t rows, int64_t y_limit) {
    return actlab_valid_wmat(&p->w) && p->w.rows == rows && p->y_off >= 0 && p->y_off + p->w.cols <= y_limit &&
           (p->thr.data != NULL || p->thr.stride == 0) && p->thr.stride >= 0;
}

static int layer_ok(const actlab_decoder *d, const actlab_dec_layer *L) {
    const int64_t dm = d->d_model, nq = d->n_heads * d->head_dim, nkv = d->n_kv_heads * d->head_dim;
    if (!L->attn_norm || !L->mlp_norm || !L->k_cache || !L->v_cache) return 0;
    if ((L->q_norm == NULL) != (L->k_norm == NULL)) return 0;
    if (L->n_qkv < 1 || L->n_qkv > 3) return 0;
    for (int i = 0; i < L->n_qkv; ++i)
        if (!proj_ok(&L->qkv[i], dm, d->qkv_cols)) return 0;
    if (L->q_off < 0 || L->q_off + nq > d->qkv_cols || L->k_off < 0 || L->k_off + nkv > d->qkv_cols ||
        L->v_off < 0 || L->v_off + nkv > d->qkv_cols)
        return 0;
    if (!proj_ok(&L->o, nq, dm) || L->o.w.cols != dm) return 0;
    if (L->has_mlp) return L->mlp.wg_t.rows == dm && L->mlp.wd_t.cols == dm;
    if (L->n_gu < 1 || L->n_gu > 2) return 0;
    for (int i = 0; i < L->n_gu; ++i)
        if (!proj_ok(&L->gu[i], dm, d->gu_cols)) return 0;
    if (L->gate_off < 0 || L->gate_off + d->d_ff > d->gu_cols || L->up_off < 0 || L->up_off + d->d_ff > d->gu_cols)
        return 0;
    return proj_ok(&L->down, d->d_ff, dm) && L->down.w.cols == dm;
}

int actlab_decoder_init(actlab_decoder *d) {
    d->scratch = NULL;
    if (d->n_layers < 0 || d->d_model < 1 || d->n_heads < 1 || d->n_kv_heads < 1 || d->n_heads % d->n_kv_heads ||
        d->head_dim < 2 || d->head_dim % 2 || d->d_ff < 1 || d->vocab < 1 || d->max_len < 1 || !d->embed ||
        !d->cos || !d->sin || !d->final_norm || (d->n_layers > 0 && !d->layers))
        return ACTLAB_ERR_ARGS;
    if (!proj_ok(&d->lm_head, d->d_model, d->vocab) || d->lm_head.w.cols != d->vocab || d->lm_head.y_off != 0)
        return ACTLAB_ERR_ARGS;
    for (int64_t l = 0; l < d->n_layers; ++l)
        if (!layer_ok(d, &d->layers[l])) return ACTLAB_ERR_ARGS;
    const int64_t n = 3 * d->d_model + d->qkv_cols + d->n_heads * d->head_dim + d->gu_cols + d->d_ff +
                      d->max_len + d->vocab;
    d->scratch = (float *)calloc((size_t)n, sizeof(float));
    return d->scratch ? ACTLAB_OK : ACTLAB_ERR_NOMEM;
}

void actlab_decoder_free(actlab_decoder *d) {
    free(d->scratch);
    free(d->layers);
    d->scratch = NULL;
    d->layers = NULL;
}

/* y = x / sqrt(mean(x^2) + eps) * w, as HF's LlamaRMSNorm in fp32 */
static void rms_norm(const float *x, const float *w, float eps, int64_t n, float *y) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * r);
}

/* x = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] */
static void rope(float *x, const float *c, const float *s, int64_t hd) {
    const int64_t h = hd / 2;
    for (int64_t i = 0; i < h; ++i) {
        const float a = x[i], b = x[i + h];
        x[i] = a * c[i] - b * s[i];
        x[i + h] = b * c[i + h] + a * s[i + h];
    }
}

static int run_proj(const actlab_dec_proj *p, const float *x, float *y, int nt) {
    const actlab_mat xm = {x, 1, p->w.rows, p->w.rows};
    return actlab_sparse_linear_w(xm, &p->w, p->thr, p->bias, y + p->y_off, p->w.cols, nt);
}

static void attention(const actlab_decoder *d, const actlab_dec_layer *L, const float *qkv, int64_t pos,
                      float *scores, float *out) {
    const int64_t hd = d->head_dim, ml = d->max_len, group = d->n_heads / d->n_kv_heads;
    for (int64_t hq = 0; hq < d->n_heads; ++hq) {
        const float *q = qkv + L->q_off + hq * hd;
        const float *K = L->k_cache + (hq / group) * ml * hd, *V = L->v_cache + (hq / group) * ml * hd;
        float mx = -INFINITY;
        for (int64_t t = 0; t <= pos; ++t) {
            float s = 0.0f;
            for (int64_t i = 0; i < hd; ++i) s += q[i] * K[t * hd + i];
            scores[t] = s * d->scale;
            if (scores[t] > mx) mx = scores[t];
        }
        float sum = 0.0f;
        for (int64_t t = 0; t <= pos; ++t) sum += (scores[t] = expf(scores[t] - mx));
        float *o = out + hq * hd;
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int64_t t = 0; t <= pos; ++t) {
            const float p = scores[t] / sum;
            for (int64_t i = 0; i < hd; ++i) o[i] += p * V[t * hd + i];
        }
    }
}

static int layer_step(const actlab_decoder *d, const actlab_dec_layer *L, int64_t pos, float *h, float *xn,
                      float *tmp, float *qkv, float *att, float *gu, float *actb, float *scores, int nt) {
    const int64_t dm = d->d_model, hd = d->head_dim, ml = d->max_len;
    int st = ACTLAB_OK;
    rms_norm(h, L->attn_norm, d->eps, dm, xn);
    for (int i = 0; i < L->n_qkv && st == ACTLAB_OK; ++i) st = run_proj(&L->qkv[i], xn, qkv, nt);
    if (st != ACTLAB_OK) return st;
    const float *c = d->cos + pos * hd, *s = d->sin + pos * hd;
    for (int64_t hq = 0; hq < d->n_heads; ++hq) {
        float *q = qkv + L->q_off + hq * hd;
        if (L->q_norm) rms_norm(q, L->q_norm, d->qk_eps, hd, q);
        rope(q, c, s, hd);
    }
    for (int64_t g = 0; g < d->n_kv_heads; ++g) {
        float *k = qkv + L->k_off + g * hd;
        if (L->k_norm) rms_norm(k, L->k_norm, d->qk_eps, hd, k);
        rope(k, c, s, hd);
        memcpy(L->k_cache + (g * ml + pos) * hd, k, (size_t)hd * sizeof(float));
        memcpy(L->v_cache + (g * ml + pos) * hd, qkv + L->v_off + g * hd, (size_t)hd * sizeof(float));
    }
    attention(d, L, qkv, pos, scores, att);
    if ((st = run_proj(&L->o, att, tmp, nt)) != ACTLAB_OK) return st;
    for (int64_t i = 0; i < dm; ++i) h[i] += tmp[i];

    rms_norm(h, L->mlp_norm, d->eps, dm, xn);
    if (L->has_mlp) {
        const actlab_mat xm = {xn, 1, dm, dm};
        st = actlab_gated_mlp_forward(&L->mlp, xm, tmp, dm, nt);
    } else {
        for (int i = 0; i < L->n_gu && st == ACTLAB_OK; ++i) st = run_proj(&L->gu[i], xn, gu, nt);
        if (st != ACTLAB_OK) return st;
        const float *g = gu + L->gate_off, *u = gu + L->up_off;
        for (int64_t j = 0; j < d->d_ff; ++j) actb[j] = actlab__apply_act(d->act, g[j]) * u[j];
        st = run_proj(&L->down, actb, tmp, nt);
    }
    if (st != ACTLAB_OK) return st;
    for (int64_t i = 0; i < dm; ++i) h[i] += tmp[i];
    return ACTLAB_OK;
}

int actlab_decode_step(actlab_decoder *d, int64_t token, int64_t pos, float *logits, int num_threads,
                       int64_t *next) {
    if (!d->scratch || token < 0 || token >= d->vocab || pos < 0 || pos >= d->max_len) return ACTLAB_ERR_ARGS;
    const int64_t dm = d->d_model;
    float *h = d->scratch, *xn = h + dm, *tmp = xn + dm, *qkv = tmp + dm, *att = qkv + d->qkv_cols;
    float *gu = att + d->n_heads * d->head_dim, *actb = gu + d->gu_cols, *scores = actb + d->d_ff;
    float *own_logits = scores + d->max_len;
    memcpy(h, d->embed + token * dm, (size_t)dm * sizeof(float));
    for (int64_t l = 0; l < d->n_layers; ++l) {
        const int st = layer_step(d, &d->layers[l], pos, h, xn, tmp, qkv, att, gu, actb, scores, num_threads);
        if (st != ACTLAB_OK) return st;
    }
    rms_norm(h, d->final_norm, d->eps, dm, xn);
    float *lg = logits ? logits : own_logits;
    const int st = run_proj(&d->lm_head, xn, lg, num_threads);
    if (st != ACTLAB_OK) return st;
    int64_t best = 0;
    for (int64_t v = 1; v < d->vocab; ++v)
        if (lg[v] > lg[best]) best = v;
    *next = best;
    return ACTLAB_OK;
}
