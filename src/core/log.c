/* eventwire — logging: the records modules send (core/log.h) and the ready-made line sink
 * (eventwire/log.h). */
#include "core/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/config.h"

const char *ew_log_level_name(ew_log_level level)
{
    switch (level) {
    case EW_LOG_DEBUG:
        return "debug";
    case EW_LOG_INFO:
        return "info";
    case EW_LOG_WARN:
        return "warn";
    case EW_LOG_ERROR:
        return "error";
    }
    return "unknown";
}

int ew_log_level_parse(const char *name)
{
    static const struct {
        const char *name;
        ew_log_level level;
    } names[] = {{"debug", EW_LOG_DEBUG},
                 {"info", EW_LOG_INFO},
                 {"warn", EW_LOG_WARN},
                 {"warning", EW_LOG_WARN},
                 {"error", EW_LOG_ERROR}};
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i].name) == 0) return (int)names[i].level;
    return -1;
}

/* ---- what modules call -------------------------------------------------------------------- */

void ew__logv(const ew__log_sink *sink, ew_log_level level, const char *module, const ew_event *ev,
              const char *fmt, va_list ap)
{
    if (!sink || !sink->fn) return;
    char msg[EW__LOG_MSG_MAX];
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    if (n >= (int)sizeof msg) memcpy(msg + sizeof msg - 4, "...", 4);
    ew_log_record r = {.level = level, .time_us = ew_now_us(), .module = module, .msg = msg};
    /* traceparent: "00-" 32 hex "-" 16 hex "-" 2 hex, validated when the event was built */
    char trace_id[33], span_id[17];
    if (ev) {
        r.event_id = ew_event_id(ev);
        r.event_type = ew_event_type(ev);
        r.correlation_id = ew_event_correlation_id(ev);
        const char *tp = ew_event_traceparent(ev);
        if (tp && strlen(tp) >= 55) {
            memcpy(trace_id, tp + 3, 32);
            trace_id[32] = '\0';
            memcpy(span_id, tp + 36, 16);
            span_id[16] = '\0';
            r.trace_id = trace_id;
            r.span_id = span_id;
        }
    }
    sink->fn(sink->ud, &r);
}

void ew__log(const ew__log_sink *sink, ew_log_level level, const char *module, const ew_event *ev,
             const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ew__logv(sink, level, module, ev, fmt, ap);
    va_end(ap);
}

/* ---- lines -------------------------------------------------------------------------------- */

static void json_member(ew_buf *b, const char *key, const char *v, size_t vlen)
{
    ew_buf_putc(b, ',');
    ew_json_write_string(b, key, strlen(key));
    ew_buf_putc(b, ':');
    ew_json_write_string(b, v, vlen);
}

/* rec as one line into b, its message cut to msg_len bytes (and marked so when cut); with_ctx
 * false leaves the event's ids out. */
static void format_line(ew_buf *b, const ew_log_record *rec, ew_log_format format,
                        const char *service, size_t msg_len, bool cut, bool with_ctx)
{
    char ts[EW_TIME_LEN + 1];
    if (ew_time_format(rec->time_us, ts)) strcpy(ts, "0000-00-00T00:00:00.000000Z");
    const char *msg = rec->msg ? rec->msg : "";
    const char *lv = ew_log_level_name(rec->level);
    struct {
        const char *key, *value;
    } ctx[] = {{"event_id", rec->event_id},
               {"event_type", rec->event_type},
               {"correlation_id", rec->correlation_id},
               {"trace_id", rec->trace_id},
               {"span_id", rec->span_id}};
    if (format == EW_LOG_FORMAT_JSON) {
        ew_buf_puts(b, "{\"ts\":\"");
        ew_buf_puts(b, ts);
        ew_buf_putc(b, '"');
        json_member(b, "level", lv, strlen(lv));
        if (service) json_member(b, "service", service, strlen(service));
        if (rec->module) json_member(b, "module", rec->module, strlen(rec->module));
        if (cut) {
            ew_buf buf;
            ew_buf_init(&buf);
            ew_buf_append(&buf, msg, msg_len);
            ew_buf_puts(&buf, "...");
            json_member(b, "msg", buf.data ? buf.data : "", buf.len);
            ew_buf_release(&buf);
        } else {
            json_member(b, "msg", msg, msg_len);
        }
        for (size_t i = 0; with_ctx && i < sizeof ctx / sizeof ctx[0]; i++)
            if (ctx[i].value) json_member(b, ctx[i].key, ctx[i].value, strlen(ctx[i].value));
        ew_buf_putc(b, '}');
        return;
    }
    ew_buf_printf(b, "%s %s", ts, lv);
    if (service) ew_buf_printf(b, " %s", service);
    if (rec->module) ew_buf_printf(b, " %s", rec->module);
    ew_buf_puts(b, ": ");
    for (size_t i = 0; i < msg_len; i++) /* one record, one line: no control characters */
        ew_buf_putc(b, (unsigned char)msg[i] < 0x20 || msg[i] == 0x7f ? ' ' : msg[i]);
    if (cut) ew_buf_puts(b, "...");
    const char *sep = " (";
    for (size_t i = 0; with_ctx && i < sizeof ctx / sizeof ctx[0]; i++) {
        if (!ctx[i].value) continue;
        ew_buf_printf(b, "%s%s=%s", sep, ctx[i].key, ctx[i].value);
        sep = " ";
    }
    if (sep[0] == ' ' && sep[1] == '\0') ew_buf_putc(b, ')');
}

/* The longest prefix of s, at most max bytes, that does not end inside a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max) return len;
    size_t k = max;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    return k;
}

size_t ew_log_format_line(const ew_log_record *rec, ew_log_format format, const char *service,
                          char *buf, size_t n)
{
    if (!n) return 0;
    ew_buf b;
    ew_buf_init(&b);
    const char *msg = rec->msg ? rec->msg : "";
    size_t msg_len = strlen(msg);
    format_line(&b, rec, format, service, msg_len, false, true);
    /* Too long: the message gives way first, then the event's ids, so that the line keeps its
     * shape (a JSON line stays one JSON object). Escapes make the written message longer than
     * the bytes kept: the longest prefix that fits is searched for (a rare path). */
    for (int with_ctx = 1; !b.oom && b.len >= n && with_ctx >= 0; with_ctx--) {
        size_t lo = 0, hi = msg_len; /* the answer is in [lo, hi], if lo fits at all */
        while (lo < hi) {
            size_t mid = utf8_cut(msg, msg_len, lo + (hi - lo + 1) / 2);
            if (mid <= lo) mid = lo + 1; /* inside a sequence: step over it */
            ew_buf_reset(&b);
            format_line(&b, rec, format, service, mid, true, with_ctx);
            if (!b.oom && b.len < n)
                lo = mid;
            else
                hi = mid - 1;
        }
        ew_buf_reset(&b);
        format_line(&b, rec, format, service, utf8_cut(msg, msg_len, lo), true, with_ctx);
    }
    size_t len = 0;
    if (!b.oom && b.data && b.len < n) {
        len = b.len;
        memcpy(buf, b.data, len);
    }
    buf[len] = '\0';
    ew_buf_release(&b);
    return len;
}

/* ---- the line sink ------------------------------------------------------------------------ */

struct ew_logger {
    char *service;
    ew_log_format format;
    ew_log_level min;
    int fd;
};

int ew_logger_new(ew_logger **out, const char *service, ew_log_format format, ew_log_level min,
                  int fd, ew_error *err)
{
    *out = NULL;
    if (fd < 0 || (format != EW_LOG_FORMAT_JSON && format != EW_LOG_FORMAT_TEXT))
        return ew_error_set(err, EW_EINVAL, "ew_logger_new: a file descriptor and a format");
    ew_logger *lg = calloc(1, sizeof *lg);
    if (!lg || (service && !(lg->service = strdup(service)))) {
        free(lg);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    lg->format = format;
    lg->min = min;
    lg->fd = fd;
    *out = lg;
    return 0;
}

void ew_logger_free(ew_logger *lg)
{
    if (!lg) return;
    free(lg->service);
    free(lg);
}

void ew_logger_configure(ew_logger *lg, const ew_config *cfg)
{
    const char *f = ew_config_get(cfg, "LOG_FORMAT");
    if (f && strcmp(f, "json") == 0) lg->format = EW_LOG_FORMAT_JSON;
    if (f && strcmp(f, "text") == 0) lg->format = EW_LOG_FORMAT_TEXT;
    int lv = ew_log_level_parse(ew_config_get(cfg, "LOG_LEVEL"));
    if (lv >= 0) lg->min = (ew_log_level)lv;
}

void ew_logger_sink(void *logger, const ew_log_record *rec)
{
    ew_logger *lg = logger;
    if (rec->level < lg->min) return;
    char line[EW__LOG_MSG_MAX + 512];
    size_t n = ew_log_format_line(rec, lg->format, lg->service, line, sizeof line - 1);
    line[n++] = '\n';
    for (size_t off = 0; off < n;) {
        ssize_t w = write(lg->fd, line + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return; /* nowhere to report it */
        off += (size_t)w;
    }
}

void ew_logger_printf(ew_logger *lg, ew_log_level level, const char *module, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ew__logv(&(ew__log_sink){ew_logger_sink, lg}, level, module, NULL, fmt, ap);
    va_end(ap);
}
