/*
 * CPython bindings of the native decode step (decode.h), added to actlab.kernels._sparse at import.
 *
 * decoder_new(header, layers, lm_head) -> capsule; pointers travel as ints and must outlive the capsule
 * (actlab.engine.native.NativeDecoder keeps their tensors). A decoder's scratch is its own: one call at
 * a time per decoder.
 *   header: (n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff, vocab, max_len, eps, qk_eps, scale,
 *            act, embed, cos, sin, final_norm, qkv_cols, gu_cols)
 *   proj:   (fmt, data, rows, cols, ld, scales, scale_ld, group, thr, thr_stride, bias, y_off)
 *   layer:  (attn_norm, mlp_norm, q_norm, k_norm, [proj...], q_off, k_off, v_off, o_proj, mlp or None,
 *            [proj...], gate_off, up_off, down_proj or None, k_cache, v_cache)
 *   mlp:    (d_ff, wg_t, wg_ld, wu, wu_ld, wd_t, wd_ld, b_gate, b_up, b_down, t_in, t_in_stride, t_act,
 *            t_act_stride, t_down, t_down_stride, act)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>

#include "decode.h"

#define CAPSULE_NAME "actlab.decoder"
#define PTR(v) ((void *)(uintptr_t)(v))

static int parse_proj(PyObject *t, actlab_dec_proj *p) {
    int fmt, group;
    long long data, rows, cols, ld, scales, scale_ld, thr, thr_stride, bias, y_off;
    if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "iLLLLLLiLLLL", &fmt, &data, &rows, &cols, &ld, &scales,
                                               &scale_ld, &group, &thr, &thr_stride, &bias, &y_off)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a projection is a tuple of 12 ints");
        return -1;
    }
    p->w = (actlab_wmat){(actlab_fmt)fmt, PTR(data), rows, cols, ld, PTR(scales), scale_ld, group};
    p->thr = (actlab_thr){PTR(thr), thr_stride};
    p->bias = PTR(bias);
    p->y_off = y_off;
    return 0;
}

static int parse_projs(PyObject *list, actlab_dec_proj *out, int max, int *n) {
    if (!PyList_Check(list) || PyList_GET_SIZE(list) < 1 || PyList_GET_SIZE(list) > max) {
        PyErr_Format(PyExc_ValueError, "expected a list of 1 to %d projections", max);
        return -1;
    }
    *n = (int)PyList_GET_SIZE(list);
    for (int i = 0; i < *n; ++i)
        if (parse_proj(PyList_GET_ITEM(list, i), &out[i]) < 0) return -1;
    return 0;
}

static int parse_mlp(PyObject *t, int64_t dm, actlab_gated_mlp *m) {
    long long dff, wg, wg_ld, wu, wu_ld, wd, wd_ld, bg, bu, bd, ti, tis, ta, tas, tdn, tds;
    int act;
    if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "LLLLLLLLLLLLLLLLi", &dff, &wg, &wg_ld, &wu, &wu_ld, &wd, &wd_ld,
                                               &bg, &bu, &bd, &ti, &tis, &ta, &tas, &tdn, &tds, &act)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a gated MLP is a tuple of 17 ints");
        return -1;
    }
    m->wg_t = (actlab_mat){PTR(wg), dm, dff, wg_ld};
    m->wu = (actlab_mat){PTR(wu), dff, dm, wu_ld};
    m->wd_t = (actlab_mat){PTR(wd), dff, dm, wd_ld};
    m->bg = PTR(bg);
    m->bu = PTR(bu);
    m->bd = PTR(bd);
    m->t_in = (actlab_thr){PTR(ti), tis};
    m->t_act = (actlab_thr){PTR(ta), tas};
    m->t_down = (actlab_thr){PTR(tdn), tds};
    m->act = (actlab_act)act;
    return 0;
}

static int parse_layer(PyObject *t, int64_t dm, actlab_dec_layer *L) {
    long long an, mn, qn, kn, qo, ko, vo, go, uo, kc, vc;
    PyObject *qkv, *o, *mlp, *gu, *down;
    if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "LLLLOLLLOOOLLOLL", &an, &mn, &qn, &kn, &qkv, &qo, &ko, &vo, &o,
                                               &mlp, &gu, &go, &uo, &down, &kc, &vc)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a layer is a tuple of 16 items");
        return -1;
    }
    L->attn_norm = PTR(an);
    L->mlp_norm = PTR(mn);
    L->q_norm = PTR(qn);
    L->k_norm = PTR(kn);
    L->q_off = qo;
    L->k_off = ko;
    L->v_off = vo;
    L->gate_off = go;
    L->up_off = uo;
    L->k_cache = PTR(kc);
    L->v_cache = PTR(vc);
    if (parse_projs(qkv, L->qkv, 3, &L->n_qkv) < 0 || parse_proj(o, &L->o) < 0) return -1;
    L->has_mlp = mlp != Py_None;
    if (L->has_mlp) return parse_mlp(mlp, dm, &L->mlp);
    if (parse_projs(gu, L->gu, 2, &L->n_gu) < 0) return -1;
    return parse_proj(down, &L->down);
}

static void decoder_destroy(PyObject *capsule) {
    actlab_decoder *d = PyCapsule_GetPointer(capsule, CAPSULE_NAME);
    if (d == NULL) return;
    actlab_decoder_free(d);
    free(d);
}

static PyObject *py_decoder_new(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *header, *layers, *lm_head;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyTuple_Type, &header, &PyList_Type, &layers, &PyTuple_Type, &lm_head))
        return NULL;
    actlab_decoder *d = calloc(1, sizeof *d);
    if (d == NULL) return PyErr_NoMemory();
    double eps, qk_eps, scale;
    int act;
    long long nl, dm, nh, nkv, hd, dff, vocab, ml, emb, cs, sn, fn, qc, gc;
    if (!PyArg_ParseTuple(header, "LLLLLLLLdddiLLLLLL", &nl, &dm, &nh, &nkv, &hd, &dff, &vocab, &ml, &eps, &qk_eps,
                          &scale, &act, &emb, &cs, &sn, &fn, &qc, &gc))
        goto fail;
    *d = (actlab_decoder){nl, dm, nh, nkv, hd, dff, vocab, ml, (float)eps, (float)qk_eps, (float)scale,
                          (actlab_act)act, PTR(emb), PTR(cs), PTR(sn), PTR(fn)};
    d->qkv_cols = qc;
    d->gu_cols = gc;
    if (PyList_GET_SIZE(layers) != nl) {
        PyErr_SetString(PyExc_ValueError, "decoder_new: len(layers) != n_layers");
        goto fail;
    }
    if (parse_proj(lm_head, &d->lm_head) < 0) goto fail;
    d->layers = calloc((size_t)(nl > 0 ? nl : 1), sizeof(actlab_dec_layer));
    if (d->layers == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (long long l = 0; l < nl; ++l)
        if (parse_layer(PyList_GET_ITEM(layers, l), dm, &d->layers[l]) < 0) goto fail;
    const int st = actlab_decoder_init(d);
    if (st != ACTLAB_OK) {
        if (st == ACTLAB_ERR_NOMEM)
            PyErr_NoMemory();
        else
            PyErr_SetString(PyExc_ValueError, "decoder_new: inconsistent decoder description (shapes or pointers)");
        goto fail;
    }
    PyObject *cap = PyCapsule_New(d, CAPSULE_NAME, decoder_destroy);
    if (cap == NULL) goto fail;
    return cap;
fail:
    actlab_decoder_free(d);
    free(d);
    return NULL;
}

/* decoder_run(capsule, ids_ptr, n, start_pos, logits_ptr, num_threads) -> argmax after the last token:
 * feeds ids[0..n) at positions start_pos.. (a prefill, or n = 1: one decode step). */
static PyObject *py_decoder_run(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    long long ids, n, start, logits;
    int nt;
    if (!PyArg_ParseTuple(args, "OLLLLi", &cap, &ids, &n, &start, &logits, &nt)) return NULL;
    actlab_decoder *d = PyCapsule_GetPointer(cap, CAPSULE_NAME);
    if (d == NULL) return NULL;
    if (n < 1 || start < 0 || start + n > d->max_len) {
        PyErr_Format(PyExc_ValueError, "decoder_run: positions %lld..%lld outside the cache of %lld", start,
                     start + n - 1, (long long)d->max_len);
        return NULL;
    }
    const int64_t *tok = PTR(ids);
    int64_t next = -1;
    int st = ACTLAB_OK;
    Py_BEGIN_ALLOW_THREADS;
    for (long long i = 0; i < n && st == ACTLAB_OK; ++i)
        st = actlab_decode_step(d, tok[i], start + i, i == n - 1 ? (float *)PTR(logits) : NULL, nt, &next);
    Py_END_ALLOW_THREADS;
    if (st == ACTLAB_ERR_NOMEM) return PyErr_NoMemory();
    if (st != ACTLAB_OK) {
        PyErr_SetString(PyExc_ValueError, "decoder_run: bad token id or kernel arguments");
        return NULL;
    }
    return PyLong_FromLongLong(next);
}

/* decoder_generate(capsule, out_ptr, start, end, num_threads): greedy, out[p + 1] = argmax(step(out[p], p))
 * for p in start..end-2; the whole decode loop in one call (no per-token Python at all). */
static PyObject *py_decoder_generate(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    long long out, start, end;
    int nt;
    if (!PyArg_ParseTuple(args, "OLLLi", &cap, &out, &start, &end, &nt)) return NULL;
    actlab_decoder *d = PyCapsule_GetPointer(cap, CAPSULE_NAME);
    if (d == NULL) return NULL;
    if (start < 0 || end > d->max_len || end < start + 1) {
        PyErr_SetString(PyExc_ValueError, "decoder_generate: positions outside the cache");
        return NULL;
    }
    int64_t *o = PTR(out);
    int st = ACTLAB_OK;
    Py_BEGIN_ALLOW_THREADS;
    for (long long p = start; p + 1 < end && st == ACTLAB_OK; ++p) st = actlab_decode_step(d, o[p], p, NULL, nt, &o[p + 1]);
    Py_END_ALLOW_THREADS;
    if (st != ACTLAB_OK) {
        PyErr_SetString(PyExc_ValueError, "decoder_generate: bad token id or kernel arguments");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef decode_methods[] = {
    {"decoder_new", py_decoder_new, METH_VARARGS, "decoder_new(header, layers, lm_head) -> native decoder"},
    {"decoder_run", py_decoder_run, METH_VARARGS,
     "decoder_run(decoder, ids_ptr, n, start_pos, logits_ptr, num_threads) -> next token"},
    {"decoder_generate", py_decoder_generate, METH_VARARGS,
     "decoder_generate(decoder, out_ptr, start, end, num_threads): greedy decode loop in C"},
    {NULL, NULL, 0, NULL},
};

int actlab__add_decode_methods(PyObject *module) { return PyModule_AddFunctions(module, decode_methods); }
