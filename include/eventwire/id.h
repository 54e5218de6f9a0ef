/* eventwire — event ids.
 *
 * Ids are UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then a 12-bit counter that keeps ids
 * made by one thread in the same millisecond in order, then 62 random bits. They sort by time
 * as text and as bytes. Thread-safe: each thread keeps its own counter and random state. */
#ifndef EVENTWIRE_ID_H
#define EVENTWIRE_ID_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EW_UUID_LEN 36 /* characters, without the NUL */

/* Writes a new UUIDv7, lower-case 8-4-4-4-12, and a NUL into out. */
void ew_uuid7(char out[EW_UUID_LEN + 1]);

/* Is s a UUID in canonical 8-4-4-4-12 hexadecimal form (either case)? */
bool ew_uuid_valid(const char *s);

#ifdef __cplusplus
}
#endif
#endif
