/* eventwire — fast per-thread pseudo-random numbers (back-off jitter, id bits). Not for secrets. */
#ifndef EW_CORE_RAND_H
#define EW_CORE_RAND_H

#include <stdint.h>

uint64_t ew__rand64(void);
double ew__rand_unit(void); /* in [0, 1) */

#endif
