#include "kernels/cuda/sampling.h"
