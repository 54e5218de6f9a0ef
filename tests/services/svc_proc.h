/* Runs a service executable as a process for the service tests: its own temporary folder (its
 * database, the event store, its stderr), HTTP_PORT=0 and the port read from its
 * "NAME listening on http://ADDR:PORT" line, SIGTERM to stop it. Header-only, static functions;
 * include after support/ew_test.h. */
#ifndef EW_TEST_SVC_PROC_H
#define EW_TEST_SVC_PROC_H

#include "eventwire/policy.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "eventwire/clock.h"

extern char **environ;

/* Who the tests publish as (svc_env.h), with a key and a policy line of its own. */
#define SVC_TEST_PUBLISHER "test-publisher"

typedef struct svc_proc {
    char name[64];
    char dir[256]; /* the temporary folder, shared by the services of one test */
    pid_t pid;
    int port;
    int out_fd;      /* the read end of its stdout */
    char base[128];  /* http://127.0.0.1:PORT */
    int exit_status; /* after svc_proc_stop: the exit status, or 128 + signal */
    int64_t stop_ms; /* after svc_proc_stop: how long it took to exit */
} svc_proc;

/* A fresh temporary folder for one test into dir (256 bytes). */
static inline void svc_tmpdir(char *dir)
{
    snprintf(dir, 256, "/tmp/ew-svc-XXXXXX");
    if (!mkdtemp(dir)) fail_msg("mkdtemp: %s", strerror(errno));
}

/* Prints the service's stderr (for a failing test). */
static inline void svc_proc_dump(const svc_proc *p)
{
    char path[sizeof p->dir + sizeof p->name + 8]; /* whatever the compiler thinks p holds */
    snprintf(path, sizeof path, "%.255s/%.63s.stderr", p->dir, p->name);
    FILE *f = fopen(path, "r");
    if (!f) return;
    fprintf(stderr, "---- %s stderr ----\n", p->name);
    char line[1024];
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fprintf(stderr, "----\n");
    fclose(f);
}

/* Starts EW_BUILD_DIR/name with the environment of this process, plus: HTTP_PORT=0,
 * EVENT_BUS_TYPE=sqlite, EVENT_STORE_URL and SERVICE_DB_URL in dir, AUTH_PASSWORD_HASH=min,
 * AUTH_REGISTRATIONS_PER_ADDRESS and EXPORT_REQUESTS_PER_USER raised to 100000, and
 * extra ("NAME=value" strings, NULL-terminated; they win; a bare "NAME" unsets NAME). Returns 0
 * once it printed its address, or -1 (with its stderr printed) when it exited or did not start
 * within 20 s. */
static inline int svc_proc_start(svc_proc *p, const char *name, const char *dir,
                                 const char *const *extra)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->dir, sizeof p->dir, "%s", dir);
    const char *bin = getenv("EW_BUILD_DIR");
    char exe[1024], self[512];
    if (!bin) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        self[n > 0 ? n : 0] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) *slash = '\0';
        bin = self;
    }
    snprintf(exe, sizeof exe, "%s/%s", bin, name);
    /* the environment, built before fork: the child only execs */
    char own[12][600];
    size_t nown = 0;
    snprintf(own[nown++], 600, "HTTP_PORT=0");
    snprintf(own[nown++], 600, "EVENT_BUS_TYPE=sqlite");
    snprintf(own[nown++], 600, "EVENT_STORE_URL=sqlite:%s/events.db", dir);
    snprintf(own[nown++], 600, "SERVICE_DB_URL=sqlite:%s/%s.db", dir, name);
    snprintf(own[nown++], 600, "AUTH_PASSWORD_HASH=min");
    snprintf(own[nown++], 600, "EVENT_BUS_DRAIN_TIMEOUT_MS=5000");
    /* The bus policy: the default, and the tests' publisher (svc_env.h), which stands in for
     * every other service, may publish anything. */
    char policy[520];
    snprintf(policy, sizeof policy, "%.500s/policy.conf", dir);
    FILE *polf = access(policy, F_OK) == 0 ? NULL : fopen(policy, "w");
    if (polf) {
        fputs(ew_policy_default_text(), polf);
        fputs("\n# the tests' publisher stands in for the other services\n"
              "publish   " SVC_TEST_PUBLISHER " #\n",
              polf);
        fclose(polf);
    }
    snprintf(own[nown++], 600, "EVENT_POLICY_FILE=%s", policy);
    /* the cases register users and request exports from one address by the dozen: those limits
     * are raised here, explicitly, and the cases of the limits set them back */
    snprintf(own[nown++], 600, "AUTH_REGISTRATIONS_PER_ADDRESS=100000");
    snprintf(own[nown++], 600, "EXPORT_REQUESTS_PER_USER=100000");
    size_t nenv = 0, nextra = 0;
    while (environ[nenv])
        nenv++;
    while (extra && extra[nextra])
        nextra++;
    const char **envp = calloc(nenv + nown + nextra + 1, sizeof *envp);
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t nl = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        int overridden = 0;
        for (size_t j = 0; j < nown && !overridden; j++)
            overridden = !strncmp(own[j], environ[i], nl) && own[j][nl] == '=';
        for (size_t j = 0; j < nextra && !overridden; j++)
            overridden =
                !strncmp(extra[j], environ[i], nl) && (extra[j][nl] == '=' || extra[j][nl] == '\0');
        if (!overridden) envp[k++] = environ[i];
    }
    for (size_t j = 0; j < nown; j++) {
        const char *eq = strchr(own[j], '=');
        size_t nl = (size_t)(eq - own[j]);
        int overridden = 0;
        for (size_t x = 0; x < nextra && !overridden; x++)
            overridden =
                !strncmp(extra[x], own[j], nl) && (extra[x][nl] == '=' || extra[x][nl] == '\0');
        if (!overridden) envp[k++] = own[j];
    }
    for (size_t j = 0; j < nextra; j++)
        if (strchr(extra[j], '=')) envp[k++] = extra[j];
    envp[k] = NULL;
    char errpath[512];
    snprintf(errpath, sizeof errpath, "%s/%s.stderr", dir, name);
    int errfd = open(errpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int fds[2];
    if (errfd < 0 || pipe2(fds, O_CLOEXEC)) fail_msg("cannot set up %s: %s", name, strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(errfd, 2);
        char *const args[] = {exe, NULL};
        execve(exe, args, (char *const *)envp);
        _exit(127);
    }
    free(envp);
    close(fds[1]);
    close(errfd);
    if (pid < 0) fail_msg("fork: %s", strerror(errno));
    p->pid = pid;
    p->out_fd = fds[0];
    /* the first line of stdout says where it listens */
    char line[512];
    size_t len = 0;
    int64_t deadline = ew_mono_ns() + 20000000000LL;
    while (len < sizeof line - 1) {
        int left = (int)((deadline - ew_mono_ns()) / 1000000);
        struct pollfd pf = {p->out_fd, POLLIN, 0};
        if (left <= 0 || poll(&pf, 1, left) <= 0) break;
        ssize_t n = read(p->out_fd, line + len, 1);
        if (n <= 0) break;
        if (line[len] == '\n') break;
        len++;
    }
    line[len] = '\0';
    const char *at = strstr(line, " listening on http://");
    const char *colon = at ? strrchr(line, ':') : NULL;
    if (!at || !colon || (p->port = atoi(colon + 1)) <= 0) {
        fprintf(stderr, "%s did not start (first line '%s')\n", name, line);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        p->pid = 0;
        svc_proc_dump(p);
        return -1;
    }
    snprintf(p->base, sizeof p->base, "http://127.0.0.1:%d", p->port);
    return 0;
}

/* Sends sig and waits up to timeout_ms for the exit. 0 when it exited (p->exit_status, stop_ms),
 * -1 when it did not (it is then killed). */
static inline int svc_proc_signal_wait(svc_proc *p, int sig, int timeout_ms)
{
    if (!p->pid) return -1;
    int64_t t0 = ew_mono_ns();
    kill(p->pid, sig);
    int status = 0;
    for (;;) {
        pid_t r = waitpid(p->pid, &status, WNOHANG);
        if (r == p->pid) break;
        if ((ew_mono_ns() - t0) / 1000000 > timeout_ms) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &status, 0);
            p->pid = 0;
            close(p->out_fd);
            svc_proc_dump(p);
            return -1;
        }
        usleep(5000);
    }
    p->stop_ms = (ew_mono_ns() - t0) / 1000000;
    p->exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    p->pid = 0;
    close(p->out_fd);
    if (p->exit_status) svc_proc_dump(p);
    return 0;
}

/* SIGTERM, and the service must exit 0 within 10 s. */
static inline void svc_proc_stop(svc_proc *p)
{
    if (!p->pid) return;
    if (svc_proc_signal_wait(p, SIGTERM, 10000)) fail_msg("%s did not stop within 10 s", p->name);
    if (p->exit_status != 0) fail_msg("%s exited with status %d", p->name, p->exit_status);
}

#endif
