/* eventwire — logging.
 *
 * The library never prints. It reports through a callback that the application sets (on a bus,
 * a store, ...), with a level and one sentence. The callback may run on any thread. */
#ifndef EVENTWIRE_LOG_H
#define EVENTWIRE_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ew_log_level {
    EW_LOG_DEBUG = 0,
    EW_LOG_INFO = 1,
    EW_LOG_WARN = 2,
    EW_LOG_ERROR = 3
} ew_log_level;

/* msg is borrowed for the call. */
typedef void (*ew_log_fn)(void *ud, ew_log_level level, const char *msg);

/* "debug", "info", "warn", "error". */
const char *ew_log_level_name(ew_log_level level);

#ifdef __cplusplus
}
#endif
#endif
