/* auth-service: new users' ids, each handed out with its data key already made in the key store
 * (docs/services.md, "auth-service"). A registration's events are encrypted under the user's
 * key, which must be durable before they are written; made one registration at a time, that is
 * a synced commit of the key store each (four syncs of the disk with its rollback journal).
 * Here the ids are made ahead, in batches the size of the recent demand, and their keys in one
 * commit: at 1,000 registrations/s, one commit for 64 of them; at a few a second, one each, as
 * before. */
#include <stdlib.h>
#include <string.h>
#include "auth.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"

#define IDS_MAX 64         /* ids made at once, at most */
#define WINDOW_US 100000   /* demand is counted over this long: the next batch is its size */
#define IDS_AGE_US 1000000 /* an id kept longer is dropped (its key stays in the store, unused) */

struct auth_ids {
    pthread_mutex_t mu; /* everything; held while a batch is made, which the others wait for */
    char ids[IDS_MAX][EW_UUID_LEN + 1];
    size_t next, n; /* ids[next..n) are ready */
    int64_t made_us;
    int64_t window_us;        /* when the current window began */
    size_t taken, taken_last; /* ids taken in the current window and in the one before */
};

auth_ids *auth_ids_new(void)
{
    auth_ids *p = calloc(1, sizeof *p);
    if (p) pthread_mutex_init(&p->mu, NULL);
    return p;
}

void auth_ids_free(auth_ids *p)
{
    if (!p) return;
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* Under mu: as many ids as were taken in the last window (1 to IDS_MAX), and their keys. */
static int make_batch(auth_ids *p, ew_store *db, int64_t now, ew_error *err)
{
    size_t want = p->taken_last < 1 ? 1 : p->taken_last > IDS_MAX ? IDS_MAX : p->taken_last;
    const char *subjects[IDS_MAX];
    for (size_t i = 0; i < want; i++) {
        ew_uuid7(p->ids[i]);
        subjects[i] = p->ids[i];
    }
    p->next = p->n = 0;
    int rc = ew_store_prepare_keys(db, subjects, want, err);
    if (rc) return rc;
    p->n = want;
    p->made_us = now;
    return 0;
}

int auth_ids_take(auth_ids *p, ew_store *db, char out[EW_UUID_LEN + 1], ew_error *err)
{
    pthread_mutex_lock(&p->mu);
    int64_t now = ew_mono_ns() / 1000;
    if (now - p->window_us >= WINDOW_US) {
        p->taken_last = now - p->window_us < 2 * WINDOW_US ? p->taken : 0;
        p->taken = 0;
        p->window_us = now;
    }
    p->taken++;
    if (p->next < p->n && now - p->made_us > IDS_AGE_US) p->next = p->n; /* stale: dropped */
    int rc = 0;
    if (p->next == p->n) rc = make_batch(p, db, now, err);
    if (!rc) memcpy(out, p->ids[p->next++], EW_UUID_LEN + 1);
    pthread_mutex_unlock(&p->mu);
    return rc;
}
