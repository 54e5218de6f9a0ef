/* eventwire — error codes and the error object.
 *
 * Every fallible call returns 0 or a negative EW_E... code. An optional ew_error* receives the
 * code and a sentence that says what went wrong (hiredis' errstr). All codes come from one list,
 * EW_ERRNO_MAP, from which ew_strerror() and ew_err_name() are made. */
#ifndef EVENTWIRE_ERROR_H
#define EVENTWIRE_ERROR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, value, retriable, description). Values only grow; a code keeps its number forever. */
#define EW_ERRNO_MAP(X)                                                                            \
    X(EINVAL, -1, 0, "invalid argument")                                                           \
    X(ENOMEM, -2, 1, "out of memory")                                                              \
    X(EJSON, -3, 0, "malformed JSON")                                                              \
    X(ENOTOBJ, -4, 0, "not a JSON object")                                                         \
    X(EMISSING, -5, 0, "missing required attribute")                                               \
    X(ETYPE, -6, 0, "attribute has the wrong type")                                                \
    X(ESPECVERSION, -7, 0, "unsupported CloudEvents specversion")                                  \
    X(EUNKNOWNTYPE, -8, 0, "unknown event type")                                                   \
    X(EVERSION, -9, 0, "unsupported event version")                                                \
    X(EDATA, -10, 0, "event data does not match its type")                                         \
    X(ETOOBIG, -11, 0, "input larger than the configured limit")                                   \
    X(EUTF8, -12, 0, "invalid UTF-8")                                                              \
    X(EDUPKEY, -13, 0, "duplicate member name")                                                    \
    X(EDEPTH, -14, 0, "nesting deeper than the limit")                                             \
    X(ETIME, -15, 0, "invalid time")                                                               \
    X(EEMPTY, -16, 0, "attribute must not be empty")                                               \
    X(ECONFIG, -17, 0, "invalid configuration")                                                    \
    X(ENOTSUP, -18, 0, "not supported by this build")                                              \
    X(ECLOSED, -19, 0, "closed")                                                                   \
    X(ETIMEDOUT, -20, 1, "timed out")                                                              \
    X(EEXIST, -21, 0, "already exists")                                                            \
    X(ENOTFOUND, -22, 0, "not found")                                                              \
    X(EIO, -23, 1, "input/output error")                                                           \
    X(ECONNECT, -24, 1, "cannot connect")                                                          \
    X(EAGAIN, -25, 1, "try again")                                                                 \
    X(ECONFLICT, -26, 0, "version conflict")                                                       \
    X(ESTATE, -27, 0, "not allowed in the current state")                                          \
    X(EUSAGE, -28, 0, "usage error")                                                               \
    X(EPERM, -29, 0, "not allowed by the policy")                                                  \
    X(EAUTH, -30, 0, "not authenticated")                                                          \
    X(ECRYPTO, -31, 0, "encrypted data cannot be decrypted")

enum {
    EW_OK = 0,
#define EW__ERR_ENUM(name, val, retriable, desc) EW_##name = (val),
    EW_ERRNO_MAP(EW__ERR_ENUM)
#undef EW__ERR_ENUM
};

/* The last error of a call, when the caller asks for it. Owned by the caller, usually on its
 * stack; a call that succeeds leaves it untouched. */
typedef struct ew_error {
    int code;      /* 0 or an EW_E... code */
    char msg[256]; /* the sentence; always NUL-terminated */
} ew_error;

/* "invalid argument" for EW_EINVAL; "unknown error" for a code not in the list. Static strings. */
const char *ew_strerror(int code);

/* "EW_EINVAL" for EW_EINVAL; "EW_UNKNOWN" for a code not in the list. Static strings. */
const char *ew_err_name(int code);

/* 1 when trying the same call again later may succeed (time-outs, lost connections, I/O). */
int ew_err_retriable(int code);

/* Fills err (when not NULL) with code and a printf-style sentence; returns code, so that
 * `return ew_error_set(err, EW_EINVAL, "...")` reads naturally. */
int ew_error_set(ew_error *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Empties err (code 0, empty message). */
void ew_error_clear(ew_error *err);

#ifdef __cplusplus
}
#endif
#endif
