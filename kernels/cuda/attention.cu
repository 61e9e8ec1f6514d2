#include "kernels/cuda/attention.h"
