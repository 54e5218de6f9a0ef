/* Test support: every test file ends with EW_TEST_MAIN(tests), which gives the executable two
 * modes: `--list` prints the names of its cases (CMake turns each into a CTest entry), and a name
 * as argument runs only that case. Without arguments every case runs. */
#ifndef EW_TEST_H
#define EW_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

int ew_test_main(int argc, char **argv, const struct CMUnitTest *tests, size_t n,
                 const char *group);

/* The address of the server NAME that CTest started for this run (the first line of
 * $EW_SERVERS_DIR/NAME.url, see scripts/test-servers), in a static buffer; NULL when none. */
const char *ew_test_server_url(const char *name);

/* Runs `ewctl ARGS` (the one built beside the test, or in $EW_BUILD_DIR) through the shell, with
 * `input` (may be NULL) on its standard input; returns its exit status (-1 when it did not exit)
 * and its standard output in *out, and its standard error in *errout when that is not NULL
 * (both malloc'ed: the caller frees them). The environment is the test's. */
int ew_test_ewctl(const char *args, const char *input, char **out, char **errout);

#define EW_TEST_MAIN(tests)                                                                        \
    int main(int argc, char **argv)                                                                \
    {                                                                                              \
        return ew_test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]), __FILE__);        \
    }

#endif
