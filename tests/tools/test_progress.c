/* Tests of ewctl's progress lines (tools/ewctl/progress.c, compiled in here): on a terminal one
 * line rewritten in place with count, total, rate and time left, and a summary; elsewhere plain
 * lines. The terminal is a real pseudo-terminal (openpty). */
#include <fcntl.h>
#include <pty.h>
#include <stdlib.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "../tools/ewctl/progress.c"

/* Everything readable on fd now. */
static char *drain(int fd)
{
    static char buf[16384];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof buf - 1 && (k = read(fd, buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)k;
    buf[n] = '\0';
    return buf;
}

static void test_a_terminal_gets_one_line_rewritten(void **state)
{
    int master, slave;
    if (openpty(&master, &slave, NULL, NULL, NULL) != 0) fail_msg("openpty failed");
    fcntl(master, F_SETFL, O_NONBLOCK);
    FILE *tty = fdopen(slave, "w");
    assert_non_null(tty);
    ewctl_progress p;
    ewctl_progress_start(&p, tty, "replayed", "events", 1000);
    assert_true(p.tty);
    p.every_ns = 0; /* draw at every step */
    ewctl_progress_add(&p, 250);
    ewctl_progress_add(&p, 250);
    ewctl_progress_end(&p);
    fclose(tty);
    usleep(50000);
    char *out = drain(master);
    close(master);
    /* each update goes back to the line's start and clears it: no new line until the summary */
    assert_non_null(strstr(out, "\r\033[Kreplayed 250 of 1000 (25%) events, "));
    assert_non_null(strstr(out, "\r\033[Kreplayed 500 of 1000 (50%) events, "));
    assert_non_null(strstr(out, " left"));
    const char *summary = strstr(out, "replayed 500 events in ");
    assert_non_null(summary);
    assert_true(summary > out && summary[-1] == 'K'); /* the line was cleared first */
    /* the pseudo-terminal turns \n into \r\n: one line break in all, after the summary */
    const char *nl = strchr(out, '\n');
    assert_non_null(nl);
    assert_true(nl > summary);
    assert_null(strchr(nl + 1, '\n'));
}

static void test_a_pipe_gets_plain_lines(void **state)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    FILE *f = fdopen(fds[1], "w");
    ewctl_progress p;
    ewctl_progress_start(&p, f, "retried", "dead letters", 0);
    assert_false(p.tty);
    p.every_ns = 0;
    ewctl_progress_add(&p, 3);
    ewctl_progress_end(&p);
    fclose(f);
    char *out = drain(fds[0]);
    close(fds[0]);
    assert_null(strchr(out, '\r'));
    assert_null(strchr(out, '\033'));
    assert_non_null(strstr(out, "retried 3 dead letters, "));     /* no total, no ETA */
    assert_non_null(strstr(out, "\nretried 3 dead letters in ")); /* the summary */
    assert_null(strstr(out, "left"));
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_a_terminal_gets_one_line_rewritten),
    cmocka_unit_test(test_a_pipe_gets_plain_lines),
};

EW_TEST_MAIN(tests)
