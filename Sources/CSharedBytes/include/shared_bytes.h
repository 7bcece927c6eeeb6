// Bytes shared between processes through a MAP_SHARED file (the lazy-pull chunk map): loads and
// stores the compiler may not cache or reorder, with acquire/release ordering.
#pragma once
#include <stdint.h>

static inline uint8_t forkd_shared_load(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void forkd_shared_store(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
