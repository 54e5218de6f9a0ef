/* What the interop tests share: running a Python script of tests/interop with Debian's
 * /usr/bin/python3 (which has python3-redis, python3-pika, python3-confluent-kafka), and reading
 * its exit status, 77 meaning "the client library is missing" (the case then skips). */
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

/* A command's exit status from system()/pclose(); 77 skips the case. */
static inline int interop_status(int status)
{
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) skip();
    return WEXITSTATUS(status);
}

#endif
