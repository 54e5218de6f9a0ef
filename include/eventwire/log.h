/* eventwire — logging.
 *
 * The library never prints. It reports through a callback that the application sets (on a bus,
 * a store, a saga engine, an HTTP server), one record at a time: a level, the part of the
 * library that speaks, one sentence, and the event it concerns when there is one (its id, type,
 * correlation id, and the trace and span ids of its traceparent). The callback may run on any
 * thread.
 *
 * A program that wants lines on stderr (or any descriptor) uses the ready-made sink below,
 * ew_logger: JSON lines or text, filtered by level, set from LOG_FORMAT and LOG_LEVEL. */
#ifndef EVENTWIRE_LOG_H
#define EVENTWIRE_LOG_H

#include <stdint.h>
#include "eventwire/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ew_log_level {
    EW_LOG_DEBUG = 0,
    EW_LOG_INFO = 1,
    EW_LOG_WARN = 2,
    EW_LOG_ERROR = 3
} ew_log_level;

/* One log record. Every string is borrowed for the call; NULL when not known. */
typedef struct ew_log_record {
    ew_log_level level;
    int64_t time_us;    /* wall clock, microseconds since the epoch */
    const char *module; /* who speaks: "bus", "dispatch", "store", "saga", "http", or a program's */
    const char *msg;    /* one sentence, no newline at the end */
    const char *event_id;
    const char *event_type;
    const char *correlation_id;
    const char *trace_id; /* 32 hex digits, from the event's traceparent */
    const char *span_id;  /* 16 hex digits, likewise */
} ew_log_record;

typedef void (*ew_log_fn)(void *ud, const ew_log_record *rec);

/* "debug", "info", "warn", "error". */
const char *ew_log_level_name(ew_log_level level);

/* The level of a name ("debug", "info", "warn" or "warning", "error"); -1 for another. */
int ew_log_level_parse(const char *name);

/* ---- a ready-made sink: one line per record on a file descriptor -------------------------- */

typedef enum ew_log_format {
    EW_LOG_FORMAT_JSON = 0, /* {"ts":"…","level":"warn","service":"…","module":"…","msg":"…",
                               "event_id":"…",…} — members that are not known are left out */
    EW_LOG_FORMAT_TEXT = 1  /* 2026-12-06T21:30:00.123456Z warn service module: msg (event …) */
} ew_log_format;

typedef struct ew_logger ew_logger;

/* A sink that writes records at level min and above to fd (borrowed: not closed), each line
 * with one write(2), so that lines of several threads and processes never mix. service is
 * copied. EW_ENOMEM, EW_EINVAL. */
int ew_logger_new(ew_logger **out, const char *service, ew_log_format format, ew_log_level min,
                  int fd, ew_error *err);

/* Frees the logger. NULL is ignored. */
void ew_logger_free(ew_logger *lg);

/* Sets the format and the level from a configuration's LOG_FORMAT and LOG_LEVEL (an unset
 * LOG_FORMAT keeps the logger's own). cfg is an ew_config (eventwire/config.h). */
struct ew_config;
void ew_logger_configure(ew_logger *lg, const struct ew_config *cfg);

/* The sink itself: pass ew_logger_sink as a log callback with the logger as its ud. */
void ew_logger_sink(void *logger, const ew_log_record *rec);

/* Logs one formatted sentence from the program's own code through the logger. module may be
 * NULL. */
void ew_logger_printf(ew_logger *lg, ew_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Writes rec as one line, without the newline, into buf (n bytes, NUL included; a longer line is
 * cut and still ends in valid JSON where format is JSON). Returns the length written. service
 * may be NULL. */
size_t ew_log_format_line(const ew_log_record *rec, ew_log_format format, const char *service,
                          char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
