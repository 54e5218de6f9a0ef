/* What the interop tests share: running a Python script of tests/interop with Debian's
 * /usr/bin/python3 (which has python3-redis, python3-pika, python3-confluent-kafka), or the
 * JavaScript one (tests/interop/js, whose npm packages scripts/setup installs) with node, and
 * reading its exit status, 77 meaning "the client library is missing" (the case then skips). */
#ifndef EW_TESTS_INTEROP_H
#define EW_TESTS_INTEROP_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/ew_test.h"

#define INTEROP_PYTHON "/usr/bin/python3"

/* The command that runs tests/interop/SCRIPT with args; skips when Python is missing. */
static inline void interop_script_cmd(char *cmd, size_t n, const char *script, const char *args)
{
    const char *src = getenv("EW_SOURCE_DIR");
    if (!src || access(INTEROP_PYTHON, X_OK) != 0) skip();
    snprintf(cmd, n, "%s '%s/tests/interop/%s' %s", INTEROP_PYTHON, src, script, args);
}

#define INTEROP_NODE "/usr/bin/node"

/* The command that runs tests/interop/js/js_interop.js with args; skips when node is missing. */
static inline void interop_node_cmd(char *cmd, size_t n, const char *args)
{
    const char *src = getenv("EW_SOURCE_DIR");
    if (!src || access(INTEROP_NODE, X_OK) != 0) skip();
    snprintf(cmd, n, "%s '%s/tests/interop/js/js_interop.js' %s", INTEROP_NODE, src, args);
}

/* Runs cmd and returns everything it printed (malloc'ed, NUL-terminated); *status gets its exit
 * status as interop_status() reads it (77 skips). */
static inline char *interop_run(const char *cmd, int *status)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16, n = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    for (;;) {
        if (cap - n < 4096) {
            out = realloc(out, cap *= 2);
            assert_non_null(out);
        }
        size_t got = fread(out + n, 1, cap - n - 1, p);
        if (got == 0) break;
        n += got;
    }
    out[n] = '\0';
    int st = pclose(p);
    *status = st;
    return out;
}

/* A command's exit status from system()/pclose(); 77 skips the case. */
static inline int interop_status(int status)
{
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) skip();
    return WEXITSTATUS(status);
}

/* Runs cmd and returns its output; skips on exit status 77, fails with the output on any other
 * but 0. Caller frees. */
static inline char *interop_output(const char *cmd)
{
    int st;
    char *out = interop_run(cmd, &st);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
        free(out);
        skip();
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "%s\n%s\n", cmd, out);
        free(out);
        fail_msg("the command above exited with status %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    return out;
}

#endif
