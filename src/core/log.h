/* eventwire — how the library's modules log (eventwire/log.h is what applications see).
 *
 * A module keeps the callback its options named as an ew__log_sink and reports through
 * ew__log(): one sentence, formatted once here, with the event it concerns when there is one.
 * Every module logs the same way; nothing prints. */
#ifndef EW_CORE_LOG_H
#define EW_CORE_LOG_H

#include <stdarg.h>
#include "eventwire/event.h"
#include "eventwire/log.h"

typedef struct ew__log_sink {
    ew_log_fn fn; /* NULL: silent */
    void *ud;
} ew__log_sink;

/* The longest sentence a module logs; a longer one is cut, ending in "...". */
#define EW__LOG_MSG_MAX 1024

/* Logs one sentence from module (a static string) through sink, about ev when not NULL (its id,
 * type, correlation id, and its traceparent's trace and span ids fill the record). Any thread. */
void ew__log(const ew__log_sink *sink, ew_log_level level, const char *module, const ew_event *ev,
             const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void ew__logv(const ew__log_sink *sink, ew_log_level level, const char *module, const ew_event *ev,
              const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));

#endif
