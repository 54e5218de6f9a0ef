/* eventwire — one SQLite failure injected into the five services of the fuzz harness
 * (fuzz_services.h), to find what an error path leaves behind: a leak, a lock, a crash.
 *
 *   fuzz-inject m|w FROM TO FILE...      (HUNT_STRIDE=K: every Kth N; HUNT_VERBOSE=1)
 *
 * For each N from FROM to TO, the services are opened, the inputs FILE... run through them as
 * fuzz_service runs them (without its checks: a failure is expected to fail something), with
 * the Nth SQLite allocation (m: SQLITE_CONFIG_MALLOC) or the Nth file write or sync (w: a VFS
 * over the default one, SQLITE_IOERR) failing once, on whichever thread makes it; then the
 * services are closed and, in an ASan build, LeakSanitizer is asked. Each N prints
 * "hunt MODE n=N counted=C fired=F leak=L"; the run stops once N is past what the inputs make.
 * Exit 1 when a leak was reported. Not a CTest entry: a tool for docs/fuzzing.md's open report
 * (it found the key store's COMMIT left open, test_keyring). */
#include <sqlite3.h>
#include <stdatomic.h>
#include "fuzz_request.h"
#include "fuzz_services.h"

static sqlite3_mem_methods real_mem, hunt_mem;
static atomic_long countdown = -1;
static atomic_long failed, counted;
static atomic_int mode_w;

static int fire(void)
{
    atomic_fetch_add(&counted, 1);
    long c = atomic_load(&countdown);
    if (c < 0) return 0;
    if (atomic_fetch_sub(&countdown, 1) == 0) {
        atomic_fetch_add(&failed, 1);
        return 1;
    }
    return 0;
}

static void *h_malloc(int n)
{
    if (!mode_w && fire()) return NULL;
    return real_mem.xMalloc(n);
}
static void *h_realloc(void *p, int n)
{
    if (!mode_w && fire()) return NULL;
    return real_mem.xRealloc(p, n);
}

/* the VFS: the default one, with xWrite / xSync failing once when fired */
static sqlite3_vfs *real_vfs;
static sqlite3_vfs hunt_vfs;
typedef struct hfile {
    sqlite3_file base;
    sqlite3_file *real;
} hfile;
static sqlite3_io_methods hunt_io;
static int h_close(sqlite3_file *f)
{
    hfile *h = (hfile *)f;
    int rc = h->real->pMethods ? h->real->pMethods->xClose(h->real) : 0;
    return rc;
}
static int h_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{
    return ((hfile *)f)->real->pMethods->xRead(((hfile *)f)->real, b, n, o);
}
static int h_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
    if (mode_w && fire()) return SQLITE_IOERR_WRITE;
    return ((hfile *)f)->real->pMethods->xWrite(((hfile *)f)->real, b, n, o);
}
static int h_truncate(sqlite3_file *f, sqlite3_int64 s)
{
    return ((hfile *)f)->real->pMethods->xTruncate(((hfile *)f)->real, s);
}
static int h_sync(sqlite3_file *f, int fl)
{
    if (mode_w && fire()) return SQLITE_IOERR_FSYNC;
    return ((hfile *)f)->real->pMethods->xSync(((hfile *)f)->real, fl);
}
static int h_size(sqlite3_file *f, sqlite3_int64 *s)
{
    return ((hfile *)f)->real->pMethods->xFileSize(((hfile *)f)->real, s);
}
static int h_lock(sqlite3_file *f, int l)
{
    return ((hfile *)f)->real->pMethods->xLock(((hfile *)f)->real, l);
}
static int h_unlock(sqlite3_file *f, int l)
{
    return ((hfile *)f)->real->pMethods->xUnlock(((hfile *)f)->real, l);
}
static int h_check(sqlite3_file *f, int *r)
{
    return ((hfile *)f)->real->pMethods->xCheckReservedLock(((hfile *)f)->real, r);
}
static int h_fctl(sqlite3_file *f, int op, void *a)
{
    return ((hfile *)f)->real->pMethods->xFileControl(((hfile *)f)->real, op, a);
}
static int h_sector(sqlite3_file *f)
{
    return ((hfile *)f)->real->pMethods->xSectorSize(((hfile *)f)->real);
}
static int h_dev(sqlite3_file *f)
{
    return ((hfile *)f)->real->pMethods->xDeviceCharacteristics(((hfile *)f)->real);
}
static int h_shmmap(sqlite3_file *f, int pg, int sz, int ext, void volatile **pp)
{
    return ((hfile *)f)->real->pMethods->xShmMap(((hfile *)f)->real, pg, sz, ext, pp);
}
static int h_shmlock(sqlite3_file *f, int o, int n, int fl)
{
    return ((hfile *)f)->real->pMethods->xShmLock(((hfile *)f)->real, o, n, fl);
}
static void h_shmbarrier(sqlite3_file *f)
{
    ((hfile *)f)->real->pMethods->xShmBarrier(((hfile *)f)->real);
}
static int h_shmunmap(sqlite3_file *f, int d)
{
    return ((hfile *)f)->real->pMethods->xShmUnmap(((hfile *)f)->real, d);
}
static int h_open(sqlite3_vfs *v, const char *name, sqlite3_file *f, int flags, int *outf)
{
    (void)v;
    hfile *h = (hfile *)f;
    h->real = (sqlite3_file *)(h + 1);
    int rc = real_vfs->xOpen(real_vfs, name, h->real, flags, outf);
    h->base.pMethods = h->real->pMethods ? &hunt_io : NULL;
    return rc;
}

/* in an ASan build, LeakSanitizer's; absent otherwise */
__attribute__((weak)) int __lsan_do_recoverable_leak_check(void);

static fuzz_services services;

static void run_input(const uint8_t *data, size_t size)
{
    fuzz_services_token(&services, services.user_id, false, services.user_token);
    fuzz_services_token(&services, services.admin_id, true, services.admin_token);
    int which = fuzz_service_of(data[0]);
    size_t len;
    char *text = fuzz_services_expand(&services, data + 1, size - 1, &len);
    ew_error e = {0};
    if (data[0] & 0x20) {
        fuzz_request r;
        fuzz_request_parse(&r, text, len);
        ew__http_output out = {0};
        if (fuzz_services_request(&services, which, &r.in, &out) == 0) {
            if (getenv("HUNT_VERBOSE"))
                fprintf(stderr, "  %d %.*s\n", out.status,
                        (int)(out.body.len > 200 ? 200 : out.body.len), out.body.data);
            ew_buf_release(&out.body);
        }
    } else {
        ew_event *ev = NULL;
        if (fuzz_services_event(&services, &ev, text, len, &e) == 0) {
            fuzz_services_deliver(&services, which, ev, &e);
            ew_event_unref(ev);
        }
    }
    svc_settle(services.svc[which], 3000, &e);
    free(text);
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    uint8_t *b = malloc(1 << 20);
    *n = fread(b, 1, 1 << 20, f);
    fclose(f);
    return b;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: fuzz-inject m|w FROM TO FILE...\n");
        return 2;
    }
    mode_w = argv[1][0] == 'w';
    long from = atol(argv[2]), to = atol(argv[3]);
    sqlite3_config(SQLITE_CONFIG_GETMALLOC, &real_mem);
    hunt_mem = real_mem;
    hunt_mem.xMalloc = h_malloc;
    hunt_mem.xRealloc = h_realloc;
    if (sqlite3_config(SQLITE_CONFIG_MALLOC, &hunt_mem) != SQLITE_OK) abort();
    sqlite3_initialize();
    real_vfs = sqlite3_vfs_find(NULL);
    hunt_vfs = *real_vfs;
    hunt_vfs.zName = "hunt";
    hunt_vfs.szOsFile = (int)sizeof(hfile) + real_vfs->szOsFile;
    hunt_vfs.xOpen = h_open;
    hunt_io = (sqlite3_io_methods){2,      h_close,  h_read,    h_write,      h_truncate, h_sync,
                                   h_size, h_lock,   h_unlock,  h_check,      h_fctl,     h_sector,
                                   h_dev,  h_shmmap, h_shmlock, h_shmbarrier, h_shmunmap, NULL,
                                   NULL};
    sqlite3_vfs_register(&hunt_vfs, 1);
    fprintf(stderr, "hunt: LeakSanitizer %s\n",
            __lsan_do_recoverable_leak_check ? "checks after each close"
                                             : "absent (not an ASan build)");
    int leaks = 0;
    long stride = getenv("HUNT_STRIDE") ? atol(getenv("HUNT_STRIDE")) : 1;
    for (long n = from; n <= to; n += stride) {
        fuzz_services_open(&services, NULL);
        atomic_store(&counted, 0);
        long f0 = atomic_load(&failed);
        atomic_store(&countdown, n);
        for (int a = 4; a < argc; a++) {
            size_t len;
            uint8_t *d = slurp(argv[a], &len);
            run_input(d, len);
            free(d);
        }
        atomic_store(&countdown, -1);
        long c = atomic_load(&counted);
        ew_error e = {0};
        for (int i = 0; i < FZ_NSERVICES; i++)
            svc_settle(services.svc[i], 3000, &e);
        fuzz_services_close(&services);
        int l = __lsan_do_recoverable_leak_check ? __lsan_do_recoverable_leak_check() : 0;
        leaks += l;
        fprintf(stderr, "hunt %c n=%ld counted=%ld fired=%ld leak=%d\n", mode_w ? 'w' : 'm', n, c,
                atomic_load(&failed) - f0, l);
        if (c < n) break; /* past the last one: nothing failed */
    }
    fprintf(stderr, "hunt: %d leak reports\n", leaks);
    return leaks ? 1 : 0;
}
