/* The main() of every test executable: list the cases, or run one, or run all. */
#include <stdlib.h>
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

const char *ew_test_server_url(const char *name)
{
    static char url[512];
    const char *dir = getenv("EW_SERVERS_DIR");
    if (!dir) return NULL;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.url", dir, name);
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *got = fgets(url, sizeof url, f);
    fclose(f);
    if (!got) return NULL;
    url[strcspn(url, "\n")] = '\0';
    return url;
}
