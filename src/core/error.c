/* eventwire — error codes and messages: everything comes from EW_ERRNO_MAP in error.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "eventwire/error.h"
#include "eventwire/log.h"

const char *ew_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define EW__ERR_STR(name, val, retriable, desc)                                                    \
    case val:                                                                                      \
        return desc;
        EW_ERRNO_MAP(EW__ERR_STR)
#undef EW__ERR_STR
    }
    return "unknown error";
}

const char *ew_err_name(int code)
{
    switch (code) {
    case 0:
        return "EW_OK";
#define EW__ERR_NAME(name, val, retriable, desc)                                                   \
    case val:                                                                                      \
        return "EW_" #name;
        EW_ERRNO_MAP(EW__ERR_NAME)
#undef EW__ERR_NAME
    }
    return "EW_UNKNOWN";
}

int ew_err_retriable(int code)
{
    switch (code) {
#define EW__ERR_RETRY(name, val, retriable, desc)                                                  \
    case val:                                                                                      \
        return retriable;
        EW_ERRNO_MAP(EW__ERR_RETRY)
#undef EW__ERR_RETRY
    }
    return 0;
}

int ew_error_set(ew_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void ew_error_clear(ew_error *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}
