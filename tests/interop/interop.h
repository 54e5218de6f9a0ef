/* What the interop tests share: running a Python script of tests/interop with Debian's
 * /usr/bin/python3 (which has python3-redis, python3-pika, python3-confluent-kafka), or the
 * JavaScript one (tests/interop/js, whose npm packages scripts/setup installs) with node, and
 * reading its exit status, 77 meaning "the client library is missing" (the case then skips). */
#ifndef EW_TESTS_INTEROP_H
#define EW_TESTS_INTEROP_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "eventwire/evauth.h"

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

/* The consumers of foreign events authenticate (docs/bus-auth.md) under the default policy plus
 * what the foreign producers send, admitted as unauthenticated (`foreign`), and subscriptions for
 * the tests' groups: a key store and a key of their own in a folder of the case's. */
typedef struct interop_auth {
    char dir[64];
    ew_config *cfg;
    ew_policy *policy;
    ew_evauth *auth;
} interop_auth;

static inline ew_evauth *interop_auth_open(interop_auth *ia, const char *service)
{
    static const char extra[] = "\n# the interop tests: what the foreign producers send\n"
                                "foreign   user.registered user.logged_in user.profile_updated\n"
                                "subscribe * user.*\n";
    char text[8192], url[128];
    snprintf(text, sizeof text, "%s%s", ew_policy_default_text(), extra);
    snprintf(ia->dir, sizeof ia->dir, "/tmp/ew-interop-XXXXXX");
    assert_non_null(mkdtemp(ia->dir));
    snprintf(url, sizeof url, "sqlite:%s/keys.db", ia->dir);
    ew_error err = {0};
    if (ew_config_new(&ia->cfg, &err) || ew_config_set(ia->cfg, "KEY_STORE_URL", url, &err) ||
        ew_policy_parse(&ia->policy, text, strlen(text), "interop policy", &err) ||
        ew_evauth_open(
            &ia->auth,
            &(ew_evauth_options){.config = ia->cfg, .service = service, .policy = ia->policy},
            &err))
        fail_msg("interop auth: %s", err.msg);
    return ia->auth;
}

/* After the bus that used it is closed. */
static inline void interop_auth_close(interop_auth *ia)
{
    ew_evauth_close(ia->auth);
    ew_policy_free(ia->policy);
    ew_config_free(ia->cfg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", ia->dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", ia->dir);
}

#endif
