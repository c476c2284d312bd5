/*
 * CPython bindings of the native decode step, added to actlab.kernels._sparse at import.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyMethodDef decode_methods[] = {
    {NULL, NULL, 0, NULL},
};

int actlab__add_decode_methods(PyObject *module) { return PyModule_AddFunctions(module, decode_methods); }
