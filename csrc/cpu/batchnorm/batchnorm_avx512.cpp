// The batch-norm passes compiled for the avx512 instruction set (flags in CMakeLists.txt).
#define OPTCORE_ISA avx512
#include "cpu/batchnorm/batchnorm_impl.h"
