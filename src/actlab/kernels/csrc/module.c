/*
 * CPython binding of the sparse GEMV core: actlab.kernels._sparse. Tensors cross as raw data pointers
 * (integers) plus sizes and strides, so the C core stays torch-free and a call costs one tuple parse.
 * The GIL is released around the work. Callers (ops.py, _args.py) are responsible for dtype, device,
 * contiguity, lifetimes and the lengths behind each pointer (bias, thresholds): a pointer carries none, so
 * the Python boundary checks them against the shapes first. The C side checks what it can: sizes,
 * strides, index ranges, threshold strides (0 or 1) and the activation code.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "sparse_gemv.h"

#ifdef __linux__
#include <sys/mman.h>
#endif

static PyObject *raise_status(int status) {
    switch (status) {
    case ACTLAB_ERR_NOMEM: return PyErr_NoMemory();
    case ACTLAB_ERR_ISA: PyErr_SetString(PyExc_ValueError, "instruction set not supported here"); return NULL;
    default: PyErr_SetString(PyExc_ValueError, "actlab sparse kernel: inconsistent shapes or strides"); return NULL;
    }
}

#define PTR(v) ((const float *)(uintptr_t)(v))

static PyObject *py_sparse_linear(PyObject *self, PyObject *args) {
    unsigned long long x, wt, thr, bias, y;
    long long rows, in, x_ld, out, wt_ld, thr_stride, y_ld;
    int num_threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "KLLLKLLKLKKLi:sparse_linear", &x, &rows, &in, &x_ld, &wt, &out, &wt_ld, &thr,
                          &thr_stride, &bias, &y, &y_ld, &num_threads))
        return NULL;
    if (thr_stride != 0 && thr_stride != 1) {
        PyErr_SetString(PyExc_ValueError, "threshold stride must be 0 (scalar) or 1 (per channel)");
        return NULL;
    }
    const actlab_mat xm = {PTR(x), rows, in, x_ld}, wm = {PTR(wt), in, out, wt_ld};
    const actlab_thr tm = {PTR(thr), thr_stride};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = actlab_sparse_linear(xm, wm, tm, PTR(bias), (float *)(uintptr_t)y, y_ld, num_threads);
    Py_END_ALLOW_THREADS
    if (status != ACTLAB_OK) return raise_status(status);
    Py_RETURN_NONE;
}

static PyObject *py_gated_mlp(PyObject *self, PyObject *args) {
    unsigned long long x, wg, wu, wd, bg, bu, bd, t_in, t_act, t_down, y;
    long long rows, dm, x_ld, dff, wg_ld, wu_ld, wd_ld, s_in, s_act, s_down, y_ld;
    int act, num_threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "KLLLKLKLKLLKKKKLKLKLiKLi:gated_mlp", &x, &rows, &dm, &x_ld, &wg, &wg_ld, &wu,
                          &wu_ld, &wd, &wd_ld, &dff, &bg, &bu, &bd, &t_in, &s_in, &t_act, &s_act, &t_down,
                          &s_down, &act, &y, &y_ld, &num_threads))
        return NULL;
    if (act < ACTLAB_ACT_SILU || act > ACTLAB_ACT_RELU) {
        PyErr_SetString(PyExc_ValueError, "unknown activation code");
        return NULL;
    }
    if ((s_in | s_act | s_down) & ~1LL) {
        PyErr_SetString(PyExc_ValueError, "threshold strides must be 0 (scalar) or 1 (per channel)");
        return NULL;
    }
    const actlab_gated_mlp m = {
        .wg_t = {PTR(wg), dm, dff, wg_ld},
        .wu = {PTR(wu), dff, dm, wu_ld},
        .wd_t = {PTR(wd), dff, dm, wd_ld},
        .bg = PTR(bg), .bu = PTR(bu), .bd = PTR(bd),
        .t_in = {PTR(t_in), s_in}, .t_act = {PTR(t_act), s_act}, .t_down = {PTR(t_down), s_down},
        .act = (actlab_act)act,
    };
    const actlab_mat xm = {PTR(x), rows, dm, x_ld};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = actlab_gated_mlp_forward(&m, xm, (float *)(uintptr_t)y, y_ld, num_threads);
    Py_END_ALLOW_THREADS
    if (status != ACTLAB_OK) return raise_status(status);
    Py_RETURN_NONE;
}

static PyObject *py_get_isa(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(actlab_isa_name(actlab_get_isa()));
}

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    (void)self;
    if (!PyArg_ParseTuple(args, "s:set_isa", &name)) return NULL;
    for (int isa = ACTLAB_ISA_AUTO; isa <= ACTLAB_ISA_AVX512; ++isa) {
        if (strcmp(name, actlab_isa_name((actlab_isa)isa)) == 0) {
            const int status = actlab_set_isa((actlab_isa)isa);
            if (status != ACTLAB_OK) return raise_status(status);
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown instruction set %s (auto, generic, avx2, avx512)", name);
    return NULL;
}

/* Asks for transparent huge pages on the 2 MiB-aligned part of [ptr, ptr + nbytes). The transposed
 * weight is read in short row chunks scattered over the whole matrix, so with 4 KiB pages nearly every
 * chunk is a TLB miss. Best called before the memory is first written. Returns whether it was applied. */
static PyObject *py_advise_hugepages(PyObject *self, PyObject *args) {
    unsigned long long ptr, nbytes;
    (void)self;
    if (!PyArg_ParseTuple(args, "KK:advise_hugepages", &ptr, &nbytes)) return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const unsigned long long huge = 2ull << 20, begin = (ptr + huge - 1) & ~(huge - 1);
    const unsigned long long end = (ptr + nbytes) & ~(huge - 1);
    if (end > begin && madvise((void *)(uintptr_t)begin, (size_t)(end - begin), MADV_HUGEPAGE) == 0)
        Py_RETURN_TRUE;
#endif
    Py_RETURN_FALSE;
}

static PyObject *py_set_parallel_min_bytes(PyObject *self, PyObject *args) {
    long long bytes;
    (void)self;
    if (!PyArg_ParseTuple(args, "L:set_parallel_min_bytes", &bytes)) return NULL;
    return PyLong_FromLongLong(actlab_set_parallel_min_bytes(bytes));
}

static PyObject *py_has_openmp(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
#ifdef _OPENMP
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyObject *py_set_load_guard(PyObject *self, PyObject *args) {
    int on;
    (void)self;
    if (!PyArg_ParseTuple(args, "p:set_load_guard", &on)) return NULL;
    return PyBool_FromLong(actlab_set_load_guard(on));
}

static PyObject *py_load_guard_state(PyObject *self, PyObject *noargs) {
    int on;
    int64_t serial_left, switches;
    (void)self;
    (void)noargs;
    actlab_load_guard_state(&on, &serial_left, &switches);
    return Py_BuildValue("{s:O,s:L,s:L}", "on", on ? Py_True : Py_False, "serial_calls_left",
                         (long long)serial_left, "switches", (long long)switches);
}

/* feeds the guard one synthetic report (tests: its policy without a loaded machine) */
static PyObject *py_guard_note(PyObject *self, PyObject *args) {
    double waited, total;
    (void)self;
    if (!PyArg_ParseTuple(args, "dd:_guard_note", &waited, &total)) return NULL;
    actlab_guard_note(waited, total);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"sparse_linear", py_sparse_linear, METH_VARARGS,
     "sparse_linear(x, rows, in, x_ld, wt, out, wt_ld, thr, thr_stride, bias, y, y_ld, num_threads)"},
    {"gated_mlp", py_gated_mlp, METH_VARARGS,
     "gated_mlp(x, rows, d_model, x_ld, wg_t, wg_ld, wu, wu_ld, wd_t, wd_ld, d_ff, bg, bu, bd, t_in, s_in, "
     "t_act, s_act, t_down, s_down, act, y, y_ld, num_threads)"},
    {"get_isa", py_get_isa, METH_NOARGS, "instruction-set path in use: generic, avx2 or avx512"},
    {"set_isa", py_set_isa, METH_VARARGS, "force a path (auto, generic, avx2, avx512); for tests"},
    {"advise_hugepages", py_advise_hugepages, METH_VARARGS,
     "advise_hugepages(ptr, nbytes) -> bool: madvise(MADV_HUGEPAGE) on the 2 MiB-aligned interior"},
    {"set_parallel_min_bytes", py_set_parallel_min_bytes, METH_VARARGS,
     "set_parallel_min_bytes(n) -> previous: weight bytes a call reads before it goes multi-threaded "
     "(negative: default 256 KiB)"},
    {"set_load_guard", py_set_load_guard, METH_VARARGS,
     "set_load_guard(on) -> previous: run on one thread while other processes hold the cores (default on)"},
    {"load_guard_state", py_load_guard_state, METH_NOARGS,
     "load_guard_state() -> {on, serial_calls_left, switches}"},
    {"_guard_note", py_guard_note, METH_VARARGS, "_guard_note(waited_s, total_s): one report (tests)"},
    {"has_openmp", py_has_openmp, METH_NOARGS, "whether the extension was built with OpenMP"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sparse",
                                    "Sparse-input GEMV kernels (raw-pointer interface; use actlab.kernels.ops).",
                                    -1, methods, NULL, NULL, NULL, NULL};

/* defined in module_weights.c and module_decode.c, each the binding of its own part */
int actlab__add_weight_methods(PyObject *module);
int actlab__add_decode_methods(PyObject *module);

PyMODINIT_FUNC PyInit__sparse(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (actlab__add_weight_methods(m) < 0 || actlab__add_decode_methods(m) < 0)) Py_CLEAR(m);
    return m;
}
