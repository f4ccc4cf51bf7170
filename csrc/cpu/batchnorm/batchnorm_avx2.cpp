// The batch-norm passes compiled for the avx2 instruction set (flags in CMakeLists.txt).
#define OPTCORE_ISA avx2
#include "cpu/batchnorm/batchnorm_impl.h"
