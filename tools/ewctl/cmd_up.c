/* ewctl up / ewctl down — start and stop the five services of the reference system as background
 * processes, with all their state under the current folder:
 *
 *   var/<service>.db       each service's own database (SERVICE_DB_URL's default)
 *   var/eventwire.db       the event store, and the bus on the default EVENT_BUS_TYPE=sqlite
 *   var/log/<service>.log  what each service prints
 *   var/run/<service>.pid  how `ewctl down` finds them
 *   var/bus-policy.conf    the bus policy (docs/bus-auth.md): the default, written when missing,
 *                          for the operator to edit; EVENT_POLICY_FILE, when set, names another
 *   var/keys/              the key store and the services' bus keys (made at their first start)
 *
 * The services take their settings from the environment ewctl runs in (EVENT_BUS_TYPE and the
 * backend's settings, HTTP_PORT, ...). `up` waits until each says `NAME listening on URL` and
 * prints `NAME URL`; a service that exits or stays silent instead fails the command, and the
 * services it started are stopped again. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "core/files.h"
#include "ewctl.h"
#include "eventwire/policy.h"
#include "svc_settings.h"

static const char up_usage[] =
    "usage: ewctl up [SERVICE...] [--timeout SECONDS]\n"
    "       ewctl down [SERVICE...] [--timeout SECONDS]\n"
    "\n"
    "up starts the services (default: auth-service user-service notification-service\n"
    "analytics-service export-service) in the background with the settings of the environment,\n"
    "keeping their databases, logs and pid files under ./var, waits until each listens, and\n"
    "prints one line per service: its name and its http:// address. down stops them with\n"
    "SIGTERM (they finish the requests and events in flight), and with SIGKILL after the\n"
    "timeout (default 30 s). The service programs are looked for beside ewctl, or in\n"
    "EW_SERVICES_DIR.\n";

#define NSERVICES SVC_MAX_SERVICES

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

#define POLICY_FILE "var/bus-policy.conf"

static int make_dirs(void)
{
    const char *dirs[] = {"var", "var/log", "var/run"};
    /* 0700 whatever the umask: the databases, keys, mail and exports are in there */
    for (size_t i = 0; i < 3; i++)
        if (ew_mkdirs(dirs[i]))
            return ewctl_fail(1, "cannot create %s: %s", dirs[i], strerror(errno));
    /* the bus policy the services read, unless the environment names one */
    const char *set = getenv("EVENT_POLICY_FILE");
    if (set && *set) return 0;
    /* 0600 whatever the umask, as everything under var/; one that is there is kept */
    const char *text = ew_policy_default_text();
    if (ew_file_write_new(POLICY_FILE, text, strlen(text), 0600) < 0)
        return ewctl_fail(1, "cannot write %s: %s", POLICY_FILE, strerror(errno));
    setenv("EVENT_POLICY_FILE", POLICY_FILE, 1);
    return 0;
}

/* Where the service programs are: EW_SERVICES_DIR, else ewctl's own folder. */
static void program_path(const char *name, char *out, size_t n)
{
    const char *dir = getenv("EW_SERVICES_DIR");
    char self[PATH_MAX];
    if (!dir) {
        ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
        if (len > 0) {
            self[len] = '\0';
            char *slash = strrchr(self, '/');
            if (slash) *slash = '\0';
            dir = self;
        } else {
            dir = ".";
        }
    }
    if (snprintf(out, n, "%s/%s", dir, name) >= (int)n) out[0] = '\0';
}

/* The pid in var/run/NAME.pid when that process is alive and is that service; else 0. */
static pid_t running_pid(const char *name)
{
    char path[256], buf[32];
    snprintf(path, sizeof path, "var/run/%s.pid", name);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char *got = fgets(buf, sizeof buf, f);
    fclose(f);
    long pid = got ? strtol(buf, NULL, 10) : 0;
    if (pid <= 0 || kill((pid_t)pid, 0) != 0) return 0;
    /* a pid file left by a crash may name a process that is something else now */
    char cmdline[PATH_MAX] = "";
    snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
    close(fd);
    if (n <= 0) return 0;
    cmdline[n] = '\0';
    const char *base = strrchr(cmdline, '/');
    base = base ? base + 1 : cmdline;
    return strcmp(base, name) == 0 ? (pid_t)pid : 0;
}

static void remove_pid_file(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "var/run/%s.pid", name);
    unlink(path);
}

/* Waits until pid is gone or the deadline passed, then SIGKILLs it. */
static void await_exit(const char *name, pid_t pid, double deadline, double timeout_s)
{
    while (kill(pid, 0) == 0 && now_s() < deadline) {
        waitpid(pid, NULL, WNOHANG); /* reaps it when it is our child (ewctl up failing) */
        usleep(20000);
    }
    if (kill(pid, 0) == 0) {
        fprintf(stderr, "ewctl: %s did not stop within %.0f s: killed\n", name, timeout_s);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    remove_pid_file(name);
}

/* Stops names[0..n): SIGTERM to all at once, then waits for each; SIGKILL after timeout_s.
 * Prints "NAME stopped" for those that ran when verbose. */
static void stop_services(const char *const *names, size_t n, double timeout_s, bool verbose)
{
    pid_t pids[NSERVICES] = {0};
    for (size_t i = 0; i < n && i < NSERVICES; i++) {
        pids[i] = running_pid(names[i]);
        if (pids[i])
            kill(pids[i], SIGTERM);
        else
            remove_pid_file(names[i]);
    }
    double deadline = now_s() + timeout_s;
    for (size_t i = 0; i < n && i < NSERVICES; i++) {
        if (!pids[i]) continue;
        await_exit(names[i], pids[i], deadline, timeout_s);
        if (verbose) printf("%s stopped\n", names[i]);
    }
}

/* Starts one service; its output goes to var/log/NAME.log from offset *log_at on. */
static pid_t spawn(const char *name, off_t *log_at)
{
    char prog[PATH_MAX], log[256];
    program_path(name, prog, sizeof prog);
    if (access(prog, X_OK) != 0) {
        ewctl_fail(1, "%s: no program at %s (build it first: make build)", name, prog);
        return -1;
    }
    snprintf(log, sizeof log, "var/log/%s.log", name);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0 && fchmod(fd, 0600)) { /* a log holds ids and addresses: 0600, whatever the umask */
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        ewctl_fail(1, "cannot open %s: %s", log, strerror(errno));
        return -1;
    }
    struct stat st;
    *log_at = fstat(fd, &st) == 0 ? st.st_size : 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd);
        ewctl_fail(1, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setsid(); /* its own session: a Ctrl-C meant for the terminal's job reaches it via down */
        int in = open("/dev/null", O_RDONLY);
        if (in >= 0) dup2(in, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        setenv("SERVICE_NAME", name, 1);
        execl(prog, name, (char *)NULL);
        fprintf(stderr, "ewctl: cannot run %s: %s\n", prog, strerror(errno));
        _exit(127);
    }
    close(fd);
    char pidfile[256];
    snprintf(pidfile, sizeof pidfile, "var/run/%s.pid", name);
    int pfd = open(pidfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *f = pfd >= 0 ? fdopen(pfd, "w") : NULL;
    if (!f && pfd >= 0) close(pfd);
    if (f) {
        fprintf(f, "%ld\n", (long)pid);
        fclose(f);
    }
    return pid;
}

/* Waits for "NAME listening on URL" in the log after offset at; copies URL into url. 0 when
 * seen; 1 when the process exited or the time ran out (the log's tail is shown). */
static int await_listening(const char *name, pid_t pid, off_t at, double timeout_s, char *url,
                           size_t n)
{
    char log[256], needle[128];
    snprintf(log, sizeof log, "var/log/%s.log", name);
    snprintf(needle, sizeof needle, "%s listening on ", name);
    double deadline = now_s() + timeout_s;
    char buf[8192];
    for (;;) {
        FILE *f = fopen(log, "r");
        if (f && fseeko(f, at, SEEK_SET) == 0) {
            while (fgets(buf, sizeof buf, f)) {
                const char *p = strstr(buf, needle);
                if (!p) continue;
                p += strlen(needle);
                size_t len = strcspn(p, " \r\n");
                snprintf(url, n, "%.*s", (int)len, p);
                fclose(f);
                return 0;
            }
        }
        if (f) fclose(f);
        int status;
        bool exited = waitpid(pid, &status, WNOHANG) == pid;
        if (exited || now_s() > deadline) {
            if (exited)
                ewctl_fail(1,
                           "%s exited (%s %d) before it listened; its log, var/log/%s.log:", name,
                           WIFEXITED(status) ? "status" : "signal",
                           WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), name);
            else
                ewctl_fail(1, "%s did not listen within %.0f s; its log, var/log/%s.log:", name,
                           timeout_s, name);
            f = fopen(log, "r");
            if (f && fseeko(f, at, SEEK_SET) == 0)
                while (fgets(buf, sizeof buf, f))
                    fprintf(stderr, "  %s", buf);
            if (f) fclose(f);
            return 1;
        }
        usleep(20000);
    }
}

/* Reads [SERVICE...] [--timeout S] into names[0..*n) (all five when none is named) and
 * *timeout_s (30 s unless given). -1 after printing the help; 2 for a bad argument. */
static int parse_args(int argc, char **argv, const char **names, size_t *n, double *timeout_s)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(up_usage, stdout);
        return -1;
    }
    *n = 0;
    *timeout_s = 30;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            char *end;
            *timeout_s = strtod(argv[++i], &end);
            if (*end || *timeout_s <= 0) return ewctl_fail(2, "--timeout takes seconds > 0");
        } else if (argv[i][0] == '-') {
            return ewctl_fail(2, "unknown option '%s'", argv[i]);
        } else if (!svc_settings_find(argv[i])) {
            return ewctl_unknown_service(argv[i]);
        } else if (*n < NSERVICES) {
            names[(*n)++] = argv[i];
        }
    }
    if (*n == 0) {
        for (*n = 0; svc_system_name((int)*n); (*n)++)
            names[*n] = svc_system_name((int)*n);
    }
    return 0;
}

int ewctl_up(int argc, char **argv)
{
    const char *names[NSERVICES];
    size_t n;
    double timeout_s;
    int rc = parse_args(argc, argv, names, &n, &timeout_s);
    if (rc) return rc < 0 ? 0 : rc;
    if (make_dirs()) return 1;
    size_t started = 0;
    bool failed = false;
    for (size_t i = 0; i < n; i++) {
        if (running_pid(names[i]))
            return ewctl_fail(1, "%s is running already (var/run/%s.pid): ewctl down first",
                              names[i], names[i]);
    }
    for (; started < n; started++) {
        off_t at;
        char url[256];
        pid_t pid = spawn(names[started], &at);
        if (pid < 0 || await_listening(names[started], pid, at, timeout_s, url, sizeof url)) {
            if (pid > 0) started++; /* to be stopped (and its pid file removed) with the others */
            failed = true;
            break;
        }
        printf("%s %s\n", names[started], url);
        fflush(stdout);
    }
    if (!failed) return 0;
    stop_services(names, started, 10, false);
    return 1;
}

int ewctl_down(int argc, char **argv)
{
    const char *names[NSERVICES];
    size_t n;
    double timeout_s;
    int rc = parse_args(argc, argv, names, &n, &timeout_s);
    if (rc) return rc < 0 ? 0 : rc;
    stop_services(names, n, timeout_s, true);
    return 0;
}
