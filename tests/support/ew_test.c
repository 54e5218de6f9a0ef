/* The main() of every test executable: list the cases, or run one, or run all. */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/ew_test.h"

/* What a case does in place of its own when EW_TEST_SKIP names it. */
static void skipped_on_request(void **state)
{
    (void)state;
    skip();
}

int ew_test_main(int argc, char **argv, const struct CMUnitTest *tests, size_t n, const char *group)
{
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < n; i++)
            printf("%s\n", tests[i].name);
        return 0;
    }
    /* EW_TEST_SKIP=NAME: the case NAME skips, through cmocka's skip() like any case that cannot
     * run here (cmake/check_skips.cmake proves with it that CTest reports skips as skipped). */
    const char *skip_name = getenv("EW_TEST_SKIP");
    if (argc > 1 && skip_name && strcmp(skip_name, argv[1]) == 0) {
        const struct CMUnitTest one[] = {{argv[1], skipped_on_request, NULL, NULL, NULL}};
        return _cmocka_run_group_tests(group, one, 1, NULL, NULL);
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

int ew_test_ewctl(const char *args, const char *input, char **out, char **errout)
{
    /* ewctl sits beside this test executable (CTest also says where, in EW_BUILD_DIR) */
    char self[4096] = ".";
    const char *bin = getenv("EW_BUILD_DIR");
    ssize_t sn = readlink("/proc/self/exe", self, sizeof self - 1);
    if (!bin && sn > 0) {
        self[sn] = '\0';
        *strrchr(self, '/') = '\0';
        bin = self;
    }
    char in_path[] = "/tmp/ewctl-in-XXXXXX", err_path[] = "/tmp/ewctl-err-XXXXXX";
    int fd = mkstemp(in_path), efd = mkstemp(err_path);
    assert_true(fd >= 0 && efd >= 0);
    if (input) assert_int_equal(write(fd, input, strlen(input)), (ssize_t)strlen(input));
    close(fd);
    close(efd);
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s/ewctl %s < %s 2> %s", bin ? bin : ".", args, in_path, err_path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (len + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    int status = pclose(p);
    FILE *e = fopen(err_path, "r");
    char *ebuf = calloc(1, 1 << 16);
    size_t elen = fread(ebuf, 1, (1 << 16) - 1, e);
    ebuf[elen] = '\0';
    fclose(e);
    unlink(in_path);
    unlink(err_path);
    *out = buf;
    if (errout)
        *errout = ebuf;
    else
        free(ebuf);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
