// The batch-norm passes compiled for the baseline instruction set (x86-64: SSE2) (flags in CMakeLists.txt).
#define OPTCORE_ISA base
#include "cpu/batchnorm/batchnorm_impl.h"
