/* eventwire — small text helpers shared by modules. */
#ifndef EW_CORE_TEXT_H
#define EW_CORE_TEXT_H

#include <stdio.h>
#include <string.h>

/* msg (a client library's, which may end in a newline and span lines) as one line in out, for
 * err->msg; "unknown error" when msg is NULL or empty. */
static inline void ew_one_line(char *out, size_t n, const char *msg)
{
    snprintf(out, n, "%s", msg && *msg ? msg : "unknown error");
    for (char *p = out; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    for (size_t l = strlen(out); l && out[l - 1] == ' ';)
        out[--l] = '\0';
}

#endif
