/*
 * CPython bindings of the weight-format kernels (weights.h), added to actlab.kernels._sparse at import.
 * As in module.c, tensors cross as raw pointers: the Python boundary (kernels/quant.py) checks dtypes,
 * shapes, contiguity and the lengths behind every pointer; C checks the struct (actlab_valid_wmat).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "weights.h"

#define PTR(v) ((const void *)(uintptr_t)(v))

static PyObject *py_sparse_linear_w(PyObject *self, PyObject *args) {
    unsigned long long x, data, scales, thr, bias, y;
    long long rows, in, x_ld, wrows, wcols, wld, scale_ld, thr_stride, y_ld;
    int fmt, group, num_threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "KLLLiKLLLKLiKLKKLi:sparse_linear_w", &x, &rows, &in, &x_ld, &fmt, &data, &wrows,
                          &wcols, &wld, &scales, &scale_ld, &group, &thr, &thr_stride, &bias, &y, &y_ld,
                          &num_threads))
        return NULL;
    if (fmt < ACTLAB_FMT_F32 || fmt > ACTLAB_FMT_Q4) {
        PyErr_SetString(PyExc_ValueError, "unknown weight format code (0 fp32, 1 bf16, 2 int8, 3 int4)");
        return NULL;
    }
    if (thr_stride != 0 && thr_stride != 1) {
        PyErr_SetString(PyExc_ValueError, "threshold stride must be 0 (scalar) or 1 (per channel)");
        return NULL;
    }
    const actlab_wmat w = {(actlab_fmt)fmt, PTR(data), wrows, wcols, wld, (const uint16_t *)PTR(scales),
                           scale_ld, group};
    if (!actlab_valid_wmat(&w)) {
        PyErr_SetString(PyExc_ValueError,
                        "packed weight is inconsistent (ld < cols or not a multiple of 16 (int8) / 32 (int4), group "
                        "not positive, scale_ld < ld (int8) / 2 * ld (int4), or a NULL pointer)");
        return NULL;
    }
    const actlab_mat xm = {(const float *)PTR(x), rows, in, x_ld};
    const actlab_thr tm = {(const float *)PTR(thr), thr_stride};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = actlab_sparse_linear_w(xm, &w, tm, (const float *)PTR(bias), (float *)(uintptr_t)y, y_ld, num_threads);
    Py_END_ALLOW_THREADS
    if (status == ACTLAB_ERR_NOMEM) return PyErr_NoMemory();
    if (status != ACTLAB_OK) {
        PyErr_SetString(PyExc_ValueError, "actlab sparse kernel: inconsistent shapes or strides");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_valid_wmat(PyObject *self, PyObject *args) {
    unsigned long long data, scales;
    long long wrows, wcols, wld, scale_ld;
    int fmt, group;
    (void)self;
    if (!PyArg_ParseTuple(args, "iKLLLKLi:valid_wmat", &fmt, &data, &wrows, &wcols, &wld, &scales, &scale_ld, &group))
        return NULL;
    if (fmt < ACTLAB_FMT_F32 || fmt > ACTLAB_FMT_Q4) Py_RETURN_FALSE;
    const actlab_wmat w = {(actlab_fmt)fmt, PTR(data), wrows, wcols, wld, (const uint16_t *)PTR(scales),
                           scale_ld, group};
    return PyBool_FromLong(actlab_valid_wmat(&w));
}

static PyObject *py_set_int8_dot(PyObject *self, PyObject *args) {
    int on;
    (void)self;
    if (!PyArg_ParseTuple(args, "i:set_int8_dot", &on)) return NULL;
    return PyBool_FromLong(actlab_set_int8_dot(on));
}

static PyObject *py_int8_dot_active(PyObject *self, PyObject *args) {
    (void)self, (void)args;
    return PyBool_FromLong(actlab_int8_dot_active());
}

static PyMethodDef weight_methods[] = {
    {"sparse_linear_w", py_sparse_linear_w, METH_VARARGS,
     "sparse_linear_w(x, rows, in, x_ld, fmt, data, wrows, wcols, ld, scales, scale_ld, group, thr, thr_stride, "
     "bias, y, y_ld, num_threads)"},
    {"valid_wmat", py_valid_wmat, METH_VARARGS,
     "valid_wmat(fmt, data, rows, cols, ld, scales, scale_ld, group) -> bool (tests of the C check)"},
    {"set_int8_dot", py_set_int8_dot, METH_VARARGS,
     "set_int8_dot(on) -> previous: 1 lets int8/int4 take VNNI dot products where present, 0 keeps float "
     "loops, -1 only reads"},
    {"int8_dot_active", py_int8_dot_active, METH_NOARGS, "int8_dot_active() -> whether int8/int4 calls take them now"},
    {NULL, NULL, 0, NULL},
};

int actlab__add_weight_methods(PyObject *module) { return PyModule_AddFunctions(module, weight_methods); }
