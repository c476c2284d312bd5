/*
 * CPython bindings of the weight-format kernels (weights.h), added to actlab.kernels._sparse at import.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "weights.h"

static PyMethodDef weight_methods[] = {
    {NULL, NULL, 0, NULL},
};

int actlab__add_weight_methods(PyObject *module) { return PyModule_AddFunctions(module, weight_methods); }
