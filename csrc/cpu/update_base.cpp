// The update executor compiled for the base instruction set (flags in CMakeLists.txt).
#define OPTCORE_ISA base
#include "cpu/update_impl.h"
