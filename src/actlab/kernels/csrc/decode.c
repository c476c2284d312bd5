/*
 * Native decode step: one C call per token for the layer loop of llama-family models (issue 12).
 */
#include "weights.h"
