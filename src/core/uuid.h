/* eventwire — ids, for the library's own use. */
#ifndef EW_CORE_UUID_H
#define EW_CORE_UUID_H

#include <stdint.h>
#include "eventwire/id.h"

/* ew_uuid7() with the time given: building an event reads the clock once for its id and its
 * time. */
void ew__uuid7_at(char out[EW_UUID_LEN + 1], int64_t now_us);

#endif
