/* The main() of every test executable: list the cases, or run one, or run all. */
#include "support/ew_test.h"

int ew_test_main(int argc, char **argv, const struct CMUnitTest *tests, size_t n,
                 const char *group)
{
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < n; i++) printf("%s\n", tests[i].name);
        return 0;
    }
    if (argc > 1) cmocka_set_test_filter(argv[1]);
    return _cmocka_run_group_tests(group, tests, n, NULL, NULL);
}
