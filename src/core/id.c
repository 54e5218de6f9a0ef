/* eventwire — UUIDv7 ids (RFC 9562, method 1: a 12-bit counter in rand_a keeps a thread's ids of
 * one millisecond in order). Randomness comes from a per-thread xoshiro256** generator seeded by
 * getrandom(): ids must be unique, not secret, and a system call per id would cost more than the
 * rest of building an event. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include "eventwire/id.h"
#include "core/rand.h"
#include "core/uuid.h"

/* Bumped in a child after fork(): the child's threads must not repeat the parent's random
 * stream (two processes would make the same ids). The one piece of process-wide state here, and
 * it only ever counts forks. */
static atomic_uint fork_generation = 1;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    atomic_fetch_add_explicit(&fork_generation, 1, memory_order_relaxed);
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

static _Thread_local struct {
    unsigned seeded; /* the fork generation the state was seeded in; 0: never */
    uint64_t s[4];
    uint64_t last_ms;
    uint32_t counter;
} tl;

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t ew__rand64(void)
{
    unsigned gen = atomic_load_explicit(&fork_generation, memory_order_relaxed);
    if (tl.seeded != gen) {
        pthread_once(&atfork_once, register_atfork);
        gen = atomic_load_explicit(&fork_generation, memory_order_relaxed);
        uint64_t seed[4] = {0};
        if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
            /* Only before the entropy pool is ready; mix what differs between threads. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            seed[0] ^= (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull;
            seed[1] ^= (uint64_t)(uintptr_t)&tl;
            seed[2] ^= (uint64_t)getpid() << 32 | (uint64_t)ts.tv_sec;
        }
        for (int i = 0; i < 4; i++)
            tl.s[i] = seed[i] ? seed[i] : 0x9e3779b97f4a7c15ull * (i + 1);
        tl.seeded = gen;
        tl.last_ms = 0;
    }
    uint64_t *s = tl.s;
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

double ew__rand_unit(void)
{
    return (double)(ew__rand64() >> 11) * 0x1.0p-53;
}

void ew__uuid7_at(char out[EW_UUID_LEN + 1], int64_t now_us)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t ms = now_us > 0 ? (uint64_t)now_us / 1000 : 0;
    uint64_t r = ew__rand64();
    if (ms > tl.last_ms) {
        tl.last_ms = ms;
        tl.counter = (uint32_t)(r >> 52) & 0x1ff; /* random start, room to count up */
    } else {
        ms = tl.last_ms; /* the clock went back or stands still: stay ordered */
        if (++tl.counter > 0xfff) {
            tl.last_ms = ++ms; /* counter overflow: borrow the next millisecond */
            tl.counter = 0;
        }
    }
    uint8_t b[16];
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    b[6] = (uint8_t)(0x70 | (tl.counter >> 8));
    b[7] = (uint8_t)tl.counter;
    uint64_t r2 = ew__rand64();
    b[8] = (uint8_t)(0x80 | (r2 & 0x3f));
    for (int i = 9; i < 16; i++)
        b[i] = (uint8_t)(r2 >> (8 * (i - 8)) ^ r >> (8 * (i - 9)));
    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 15];
    }
    *p = '\0';
}

void ew_uuid7(char out[EW_UUID_LEN + 1])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ew__uuid7_at(out, (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
}

/* 1 for the hexadecimal digits, either case. */
static const unsigned char is_hex[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1};

bool ew_uuid_valid(const char *s)
{
    if (!s) return false;
    const unsigned char *u = (const unsigned char *)s;
    /* Stops at the first byte that does not fit, so it never reads past a shorter string's
     * NUL (which is neither a digit nor a hyphen). */
    for (int i = 0; i < EW_UUID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (u[i] != '-') return false;
        } else if (!is_hex[u[i]]) {
            return false;
        }
    }
    return u[EW_UUID_LEN] == '\0';
}
