/* ewctl — progress of long work (progress.h). */
#include "progress.h"

#include <unistd.h>
#include "eventwire/clock.h"

void ewctl_progress_start(ewctl_progress *p, FILE *out, const char *verb, const char *noun,
                          uint64_t total)
{
    *p = (ewctl_progress){.out = out, .verb = verb, .noun = noun, .total = total};
    p->tty = isatty(fileno(out)) == 1;
    p->every_ns = p->tty ? 100000000LL : 5000000000LL;
    p->t0_ns = p->last_ns = ew_mono_ns();
}

/* "12 s", "3 min 20 s", "2 h 5 min" */
static void duration(char *buf, size_t n, double s)
{
    if (s < 60)
        snprintf(buf, n, "%.0f s", s);
    else if (s < 3600)
        snprintf(buf, n, "%d min %d s", (int)(s / 60), (int)s % 60);
    else
        snprintf(buf, n, "%d h %d min", (int)(s / 3600), (int)(s / 60) % 60);
}

static void draw(ewctl_progress *p, int64_t now)
{
    double elapsed = (double)(now - p->t0_ns) / 1e9;
    double rate = elapsed > 0 ? (double)p->done / elapsed : 0;
    char line[256];
    int k = snprintf(line, sizeof line, "%s %llu", p->verb, (unsigned long long)p->done);
    if (p->total)
        k += snprintf(line + k, sizeof line - (size_t)k, " of %llu (%.0f%%)",
                      (unsigned long long)p->total, 100.0 * (double)p->done / (double)p->total);
    k += snprintf(line + k, sizeof line - (size_t)k, " %s, %.0f/s", p->noun, rate);
    if (p->total && rate > 0 && p->done < p->total) {
        char eta[32];
        duration(eta, sizeof eta, (double)(p->total - p->done) / rate);
        snprintf(line + k, sizeof line - (size_t)k, ", %s left", eta);
    }
    if (p->tty)
        fprintf(p->out, "\r\033[K%s", line); /* back to the line's start, cleared */
    else
        fprintf(p->out, "%s\n", line);
    fflush(p->out);
    p->drawn = true;
}

void ewctl_progress_add(ewctl_progress *p, uint64_t n)
{
    p->done += n;
    int64_t now = ew_mono_ns();
    if (now - p->last_ns < p->every_ns) return;
    p->last_ns = now;
    draw(p, now);
}

void ewctl_progress_end(ewctl_progress *p)
{
    double elapsed = (double)(ew_mono_ns() - p->t0_ns) / 1e9;
    if (p->tty && p->drawn) fputs("\r\033[K", p->out);
    fprintf(p->out, "%s %llu %s in %.1f s (%.0f/s)\n", p->verb, (unsigned long long)p->done,
            p->noun, elapsed, elapsed > 0 ? (double)p->done / elapsed : 0.0);
    fflush(p->out);
}
