/* eventwire — time.
 *
 * Times are int64 microseconds since the Unix epoch, UTC; on the wire they are RFC 3339 text.
 * Every function here is thread-safe. */
#ifndef EVENTWIRE_CLOCK_H
#define EVENTWIRE_CLOCK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EW_TIME_LEN 27 /* "2026-11-27T02:24:45.123456Z", without the NUL */

/* Wall-clock time now. */
int64_t ew_now_us(void);

/* A monotonic clock for durations, in nanoseconds from an unspecified start. */
int64_t ew_mono_ns(void);

/* Writes t as RFC 3339 UTC with microseconds ("2026-11-27T02:24:45.123456Z") into buf, which
 * holds at least EW_TIME_LEN + 1 bytes. Returns 0, or EW_EINVAL for a year outside 0..9999. */
int ew_time_format(int64_t t_us, char *buf);

/* Parses RFC 3339 ("2026-11-27T02:24:45Z", "...45.5+01:00", lower-case t and z too) into
 * microseconds UTC. Fractions beyond microseconds are truncated. Returns 0 or EW_ETIME. */
int ew_time_parse(const char *s, int64_t *t_us);

#ifdef __cplusplus
}
#endif
#endif
