// Header-only target: the declaration of libFuzzer's driver for forkd-fuzz.
#include "cfuzz.h"
