// Header-only: the functions are static inline in include/shared_bytes.h.
#include "shared_bytes.h"
