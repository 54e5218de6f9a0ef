/* eventwire — private folders and files written whole (files.h). */
#include "core/files.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int mkdir_private(const char *dir)
{
    if (mkdir(dir, 0700) == 0) return chmod(dir, 0700); /* whatever the umask */
    return errno == EEXIST ? 0 : -1;
}

int ew_mkdirs(const char *dir)
{
    char p[4096];
    size_t n = strlen(dir);
    if (n == 0) return 0;
    if (n >= sizeof p) return errno = ENAMETOOLONG, -1;
    memcpy(p, dir, n + 1);
    for (char *c = p + 1; *c; c++) {
        if (*c != '/') continue;
        *c = '\0';
        if (mkdir_private(p)) return -1;
        *c = '/';
    }
    return mkdir_private(p);
}

int ew_mkdirs_for(const char *path)
{
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) return errno = ENAMETOOLONG, -1;
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = '\0';
    return ew_mkdirs(dir);
}

/* Writes data to a new file beside path (its name in tmp), synced, with mode. */
static int write_beside(const char *path, char tmp[4200], const void *data, size_t n, mode_t mode)
{
    if (snprintf(tmp, 4200, "%s.XXXXXX", path) >= 4200) return errno = ENAMETOOLONG, -1;
    int fd = mkstemp(tmp); /* 0600, O_EXCL */
    if (fd < 0) return -1;
    const char *p = data;
    size_t left = n;
    int bad = fchmod(fd, mode);
    while (!bad && left) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = EIO;
            bad = 1;
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    if (!bad) bad = fsync(fd);
    int e = errno;
    if (close(fd) && !bad) bad = 1, e = errno;
    if (bad) {
        unlink(tmp);
        return errno = e, -1;
    }
    return 0;
}

int ew_file_write_new(const char *path, const void *data, size_t n, mode_t mode)
{
    char tmp[4200];
    if (write_beside(path, tmp, data, n, mode)) return -1;
    int rc = link(tmp, path), e = errno;
    unlink(tmp);
    if (rc) return e == EEXIST ? 1 : (errno = e, -1);
    return 0;
}

int ew_file_replace(const char *path, const void *data, size_t n, mode_t mode)
{
    char tmp[4200];
    if (write_beside(path, tmp, data, n, mode)) return -1;
    if (rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return errno = e, -1;
    }
    return 0;
}

int ew_file_create_empty(const char *path, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) return errno == EEXIST ? 0 : -1;
    int rc = fchmod(fd, mode), e = errno;
    close(fd); /* a file just made: no lock of anyone's on it yet */
    return rc ? (errno = e, -1) : 0;
}
