/* The soak's load generator and its checks. Workers pace themselves to a shared rate and pick
 * an operation by weight: registration (then a login), login, profile update, password reset
 * request, its confirmation with the token from the mail, data export, deletion. Each user is
 * worked on by one worker at a time. A request without an answer (its service was killed) is
 * uncertain: it is resolved after the run from the databases, or sent again where that is
 * safe. The checks compare what was accepted with where it landed. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "soak_load.h"
#include "svc_auth.h"

enum { AUTH, USER, NOTIFICATION, ANALYTICS, EXPORT };
enum { OP_REGISTER, OP_LOGIN, OP_PROFILE, OP_RESET, OP_CONFIRM, OP_EXPORT, OP_DELETE, NOPS };
static const char *const op_names[NOPS] = {
    "register", "login", "profile_update", "reset_request", "reset_confirm", "export", "deletion"};
/* the mix: weights out of 100 */
static const int op_weight[NOPS] = {22, 15, 25, 8, 8, 10, 12};
enum { R_SENT, R_ACCEPTED, R_REFUSED, R_NO_ANSWER, R_NOT_YET, R_UNEXPECTED, NRES };
static const char *const res_names[NRES] = {"sent",      "accepted", "refused_503",
                                            "no_answer", "not_yet",  "unexpected"};

typedef enum {
    U_UNSURE,        /* registration sent, no answer */
    U_NONE,          /* not registered */
    U_ACTIVE,        /* registered */
    U_DELETING,      /* deletion accepted (request id known) */
    U_DELETE_UNSURE, /* deletion sent, no answer */
    U_GONE,          /* deleted, the request id unknown (the repeat found no user) */
} ustate;

typedef struct user {
    int n;
    char id[EW_UUID_LEN + 1];
    char name[16], email[48];
    char pw[48], pw_alt[48]; /* pw_alt: a confirmation whose answer was lost */
    char *token;
    ustate state;
    bool busy, profile_seen, welcome_seen, reset_pending, reset_unsure, reset_done;
    int64_t registered_ms, reset_ms;
    char exports[2][EW_UUID_LEN + 1];
    int nexports;
    char deletion[EW_UUID_LEN + 1];
} user;

/* ---- the mail spool: an index of the .eml files read so far ------------------------------- */

enum { M_WELCOME, M_RESET, M_EXPORT, M_OTHER };

typedef struct mail {
    char file[80];
    char to[48];
    int kind;
    char token[128]; /* a reset mail's token */
} mail;

typedef struct mail_index {
    mail *v;
    size_t n, cap;
    char **seen; /* open addressing on file names */
    size_t seen_cap;
    int64_t scanned_ms;
} mail_index;

static uint64_t fnv(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static bool seen_add(mail_index *m, const char *file)
{
    if ((m->n + 1) * 2 >= m->seen_cap) {
        size_t cap = m->seen_cap ? m->seen_cap * 2 : 4096;
        char **s = calloc(cap, sizeof *s);
        for (size_t i = 0; i < m->seen_cap; i++)
            if (m->seen[i]) {
                size_t j = fnv(m->seen[i]) & (cap - 1);
                while (s[j])
                    j = (j + 1) & (cap - 1);
                s[j] = m->seen[i];
            }
        free(m->seen);
        m->seen = s;
        m->seen_cap = cap;
    }
    size_t j = fnv(file) & (m->seen_cap - 1);
    while (m->seen[j]) {
        if (!strcmp(m->seen[j], file)) return false;
        j = (j + 1) & (m->seen_cap - 1);
    }
    m->seen[j] = strdup(file);
    return true;
}

static void mail_parse(const char *text, mail *out)
{
    const char *to = strstr(text, "\nTo: ");
    if (to) snprintf(out->to, sizeof out->to, "%.*s", (int)strcspn(to + 5, "\r\n"), to + 5);
    const char *subj = strstr(text, "\nSubject: ");
    out->kind = M_OTHER;
    if (subj && !strncmp(subj + 10, "Welcome", 7)) out->kind = M_WELCOME;
    if (subj && !strncmp(subj + 10, "Reset your password", 19)) {
        out->kind = M_RESET;
        /* the token is the word after "new password:" (notification-service's template) */
        const char *tk = strstr(text, "new password:");
        if (tk) {
            tk += strlen("new password:");
            tk += strspn(tk, " \r\n");
            snprintf(out->token, sizeof out->token, "%.*s", (int)strcspn(tk, " \r\n&\"<"), tk);
        }
    }
    if (subj && !strncmp(subj + 10, "Your data export", 16)) out->kind = M_EXPORT;
}

/* Reads the .eml files not read yet. */
static void mail_scan(mail_index *m)
{
    DIR *d = opendir("var/mail");
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (len < 5 || e->d_name[0] == '.' || strcmp(e->d_name + len - 4, ".eml") ||
            len >= sizeof m->v[0].file)
            continue;
        char path[400];
        snprintf(path, sizeof path, "var/mail/%s", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue; /* deleted meanwhile */
        char text[16384];
        size_t got = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        text[got] = '\0';
        if (!seen_add(m, e->d_name)) continue;
        if (m->n == m->cap) {
            m->cap = m->cap ? m->cap * 2 : 1024;
            m->v = realloc(m->v, m->cap * sizeof *m->v);
        }
        mail *x = &m->v[m->n++];
        memset(x, 0, sizeof *x);
        snprintf(x->file, sizeof x->file, "%.79s", e->d_name); /* len < sizeof: checked */
        mail_parse(text, x);
    }
    closedir(d);
}

static void mail_index_release(mail_index *m)
{
    for (size_t i = 0; i < m->seen_cap; i++)
        free(m->seen[i]);
    free(m->seen);
    free(m->v);
    memset(m, 0, sizeof *m);
}

/* ---- the generator ----------------------------------------------------------------------- */

struct soak_load {
    soak_ctx *c;
    const char *admin;
    int rate;
    pthread_t workers[4];
    int nworkers;
    volatile int stop;
    pthread_mutex_t lock; /* everything below */
    user **users;
    size_t nusers, cap;
    int next_user;
    int64_t next_slot_ns;
    long count[NOPS][NRES];
    int nunexpected_shown;
    double *lat_ms; /* the accepted requests' times */
    size_t nlat, lat_cap;
    mail_index mails;
    pthread_mutex_t mail_lock;
    int resets_completed, logins_after_reset;
};

static void count(soak_load *l, int op, int res, const soak_http *r)
{
    pthread_mutex_lock(&l->lock);
    l->count[op][res]++;
    if (res == R_ACCEPTED && l->nlat < 2000000) {
        if (l->nlat == l->lat_cap) {
            l->lat_cap = l->lat_cap ? l->lat_cap * 2 : 4096;
            l->lat_ms = realloc(l->lat_ms, l->lat_cap * sizeof *l->lat_ms);
        }
        l->lat_ms[l->nlat++] = r->ms;
    }
    if (res == R_UNEXPECTED && l->nunexpected_shown++ < 20)
        soak_say("soak: unexpected answer to %s: %ld %.300s", op_names[op], r->status, r->body);
    pthread_mutex_unlock(&l->lock);
}

/* The class of an answer: want is the status of success. */
static int classify(const soak_http *r, long want)
{
    if (r->status == want) return R_ACCEPTED;
    if (r->status == 0) return R_NO_ANSWER;
    if (r->status == 503 && r->retry_after) return R_REFUSED;
    if (r->status == 503) return R_NO_ANSWER; /* the service's database or bus: unreachable */
    return R_UNEXPECTED;
}

static void set_token(user *u, const char *t)
{
    free(u->token);
    u->token = t ? strdup(t) : NULL;
}

/* Logs u in with its password (or the other one, when a confirmation was not answered). */
static int login(soak_load *l, user *u, bool counted)
{
    const char *pws[2] = {u->pw, u->pw_alt};
    for (int k = 0; k < 2; k++) {
        if (!pws[k][0]) continue;
        char body[256];
        snprintf(body, sizeof body, "{\"username\":\"%s\",\"password\":\"%s\"}", u->name, pws[k]);
        soak_http r = soak_call(l->c, AUTH, "POST", "/auth/login", body, NULL, 10000);
        if (r.status == 401 && k == 0 && u->pw_alt[0]) {
            soak_http_free(&r);
            continue;
        }
        int res = classify(&r, 200);
        if (counted) count(l, OP_LOGIN, res, &r);
        char tok[SVC_TOKEN_MAX + 1];
        if (res == R_ACCEPTED && soak_member(&r, "token", tok, sizeof tok)) {
            set_token(u, tok);
            if (k == 1) {
                /* the new password works: the unanswered confirmation had gone through */
                snprintf(u->pw, sizeof u->pw, "%s", u->pw_alt);
                if (u->reset_pending) {
                    u->reset_pending = false;
                    u->reset_done = true;
                    pthread_mutex_lock(&l->lock);
                    l->resets_completed++;
                    pthread_mutex_unlock(&l->lock);
                }
            }
            u->pw_alt[0] = '\0';
        }
        soak_http_free(&r);
        return res == R_ACCEPTED ? 0 : -1;
    }
    return -1;
}

/* A user in state st, not busy, meeting ok (when not NULL); marked busy. NULL when none. */
static user *pick(soak_load *l, ustate st, bool (*ok)(const user *))
{
    user *found = NULL;
    pthread_mutex_lock(&l->lock);
    for (int tries = 0; tries < 32 && l->nusers && !found; tries++) {
        user *u = l->users[(size_t)rand() % l->nusers];
        if (!u->busy && u->state == st && (!ok || ok(u)))
            found = u; /* a busy one is being changed */
    }
    if (found) found->busy = true;
    pthread_mutex_unlock(&l->lock);
    return found;
}

static void release(soak_load *l, user *u)
{
    pthread_mutex_lock(&l->lock);
    u->busy = false;
    pthread_mutex_unlock(&l->lock);
}

static void op_register(soak_load *l)
{
    user *u = calloc(1, sizeof *u);
    pthread_mutex_lock(&l->lock);
    u->n = ++l->next_user;
    if (l->nusers == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 1024;
        l->users = realloc(l->users, l->cap * sizeof *l->users);
    }
    l->users[l->nusers++] = u;
    u->busy = true;
    pthread_mutex_unlock(&l->lock);
    snprintf(u->name, sizeof u->name, "soak%06dz", u->n);
    snprintf(u->email, sizeof u->email, "%s@example.com", u->name);
    snprintf(u->pw, sizeof u->pw, "first password %d", u->n);
    char body[256];
    snprintf(body, sizeof body, "{\"username\":\"%s\",\"email\":\"%s\",\"password\":\"%s\"}",
             u->name, u->email, u->pw);
    u->registered_ms = soak_ms();
    soak_http r = soak_call(l->c, AUTH, "POST", "/auth/register", body, NULL, 10000);
    int res = classify(&r, 201);
    count(l, OP_REGISTER, res, &r);
    if (res == R_ACCEPTED && soak_member(&r, "user_id", u->id, sizeof u->id))
        u->state = U_ACTIVE;
    else if (res == R_UNEXPECTED)
        u->state = U_NONE;
    else
        u->state = U_UNSURE; /* resolved after the run, in auth-service's database */
    soak_http_free(&r);
    if (u->state == U_ACTIVE) login(l, u, true);
    release(l, u);
}

static void op_login(soak_load *l)
{
    user *u = pick(l, U_ACTIVE, NULL);
    if (!u) return;
    login(l, u, true);
    release(l, u);
}

/* u's token, logging in when it has none; false when that failed. */
static bool ensure_token(soak_load *l, user *u)
{
    return u->token || login(l, u, true) == 0;
}

static void op_profile(soak_load *l)
{
    user *u = pick(l, U_ACTIVE, NULL);
    if (!u) return;
    if (ensure_token(l, u)) {
        char path[128], body[128];
        snprintf(path, sizeof path, "/users/%s/profile", u->id);
        snprintf(body, sizeof body, "{\"display_name\":\"%s v%d\",\"location\":\"Lyon\"}", u->name,
                 rand() % 1000);
        soak_http r = soak_call(l->c, USER, "PUT", path, body, u->token, 10000);
        int res = classify(&r, 200);
        if (r.status == 404) res = R_NOT_YET; /* user-service has not made the profile yet */
        if (r.status == 401) set_token(u, NULL);
        if (res == R_ACCEPTED) u->profile_seen = true;
        count(l, OP_PROFILE, res, &r);
        soak_http_free(&r);
    }
    release(l, u);
}

static bool can_reset(const user *u)
{
    return !u->reset_pending && !u->reset_done;
}

static void op_reset(soak_load *l)
{
    user *u = pick(l, U_ACTIVE, can_reset);
    if (!u) return;
    char body[128];
    snprintf(body, sizeof body, "{\"email\":\"%s\"}", u->email);
    soak_http r = soak_call(l->c, AUTH, "POST", "/auth/password-reset", body, NULL, 10000);
    int res = classify(&r, 202);
    count(l, OP_RESET, res, &r);
    if (res == R_ACCEPTED || res == R_NO_ANSWER) {
        u->reset_pending = true; /* without an answer: perhaps; the mail tells */
        u->reset_unsure = res == R_NO_ANSWER;
        u->reset_ms = soak_ms();
    }
    soak_http_free(&r);
    release(l, u);
}

/* The newest mail of kind to email in the index (rescanned at most twice a second). */
static bool find_mail(soak_load *l, const char *email, int kind, mail *out)
{
    bool found = false;
    pthread_mutex_lock(&l->mail_lock);
    if (soak_ms() - l->mails.scanned_ms > 500) {
        mail_scan(&l->mails);
        l->mails.scanned_ms = soak_ms();
    }
    for (size_t i = 0; i < l->mails.n; i++)
        if (l->mails.v[i].kind == kind && !strcmp(l->mails.v[i].to, email)) {
            *out = l->mails.v[i];
            found = true;
        }
    pthread_mutex_unlock(&l->mail_lock);
    return found;
}

static bool reset_waiting(const user *u)
{
    return u->reset_pending;
}

/* Confirms u's reset with the token from its mail, when the mail is there. */
static void op_confirm_user(soak_load *l, user *u)
{
    mail m;
    if (!find_mail(l, u->email, M_RESET, &m) || !m.token[0]) {
        /* not there yet; a request that was never answered may never have been made */
        if (u->reset_unsure && soak_ms() - u->reset_ms > 120000) u->reset_pending = false;
        return;
    }
    char pw[48], body[512];
    snprintf(pw, sizeof pw, "second password %d", u->n);
    snprintf(body, sizeof body, "{\"token\":\"%s\",\"password\":\"%s\"}", m.token, pw);
    soak_http r = soak_call(l->c, AUTH, "POST", "/auth/password-reset/confirm", body, NULL, 10000);
    int res = classify(&r, 200);
    /* the confirmation before had no answer, and it had gone through */
    bool went_through = u->pw_alt[0] && r.status == 400 && strstr(r.body, "used already");
    if (went_through) res = R_ACCEPTED;
    count(l, OP_CONFIRM, res, &r);
    if (res == R_NO_ANSWER) {
        /* sent again later with the same token: it tells whether this one went through */
        snprintf(u->pw_alt, sizeof u->pw_alt, "%s", pw);
    } else if (res == R_ACCEPTED) {
        u->reset_pending = false;
        u->reset_done = true;
        set_token(u, NULL); /* the reset ended the sessions */
        snprintf(u->pw, sizeof u->pw, "%s", pw);
        u->pw_alt[0] = '\0';
        pthread_mutex_lock(&l->lock);
        l->resets_completed++;
        pthread_mutex_unlock(&l->lock);
        if (login(l, u, true) == 0) {
            pthread_mutex_lock(&l->lock);
            l->logins_after_reset++;
            pthread_mutex_unlock(&l->lock);
        }
    }
    soak_http_free(&r);
}

static void op_confirm(soak_load *l)
{
    user *u = pick(l, U_ACTIVE, reset_waiting);
    if (!u) return;
    op_confirm_user(l, u);
    release(l, u);
}

static bool can_export(const user *u)
{
    return u->nexports < 2;
}

static void op_export(soak_load *l)
{
    user *u = pick(l, U_ACTIVE, can_export);
    if (!u) return;
    if (ensure_token(l, u)) {
        char body[128], id[EW_UUID_LEN + 1];
        snprintf(body, sizeof body, "{\"user_id\":\"%s\"}", u->id);
        soak_http r = soak_call(l->c, EXPORT, "POST", "/exports", body, u->token, 10000);
        int res = classify(&r, 202);
        if (r.status == 401) set_token(u, NULL);
        count(l, OP_EXPORT, res, &r);
        if (res == R_ACCEPTED && soak_member(&r, "export_id", id, sizeof id))
            snprintf(u->exports[u->nexports++], sizeof u->exports[0], "%s", id);
        soak_http_free(&r);
    }
    release(l, u);
}

/* Deleted are users who got their welcome mail, have no export and no reset under way. */
static bool can_delete(const user *u)
{
    return u->nexports == 0 && !u->reset_pending && u->profile_seen;
}

static void op_delete(soak_load *l)
{
    user *u = pick(l, U_ACTIVE, can_delete);
    if (!u) return;
    mail m;
    if (!u->welcome_seen) u->welcome_seen = find_mail(l, u->email, M_WELCOME, &m);
    if (u->welcome_seen && ensure_token(l, u)) {
        char path[128];
        snprintf(path, sizeof path, "/auth/users/%s", u->id);
        soak_http r = soak_call(l->c, AUTH, "DELETE", path, NULL, u->token, 10000);
        int res = classify(&r, 202);
        if (r.status == 401) set_token(u, NULL);
        count(l, OP_DELETE, res, &r);
        if (res == R_ACCEPTED && soak_member(&r, "request_id", u->deletion, sizeof u->deletion))
            u->state = U_DELETING;
        else if (res == R_NO_ANSWER)
            u->state = U_DELETE_UNSURE;
        soak_http_free(&r);
    }
    release(l, u);
}

static void *worker(void *ud)
{
    soak_load *l = ud;
    int64_t step = 1000000000LL / l->rate;
    while (!l->stop) {
        pthread_mutex_lock(&l->lock);
        int64_t now = ew_mono_ns();
        int64_t slot = l->next_slot_ns > now ? l->next_slot_ns : now;
        l->next_slot_ns = slot + step;
        pthread_mutex_unlock(&l->lock);
        if (slot > now) usleep((useconds_t)((slot - now) / 1000));
        if (l->stop) break;
        int w = rand() % 100, op = 0;
        while (op < NOPS - 1 && w >= op_weight[op])
            w -= op_weight[op++];
        switch (op) {
        case OP_REGISTER:
            op_register(l);
            break;
        case OP_LOGIN:
            op_login(l);
            break;
        case OP_PROFILE:
            op_profile(l);
            break;
        case OP_RESET:
            op_reset(l);
            break;
        case OP_CONFIRM:
            op_confirm(l);
            break;
        case OP_EXPORT:
            op_export(l);
            break;
        default:
            op_delete(l);
            break;
        }
    }
    return NULL;
}

soak_load *soak_load_new(soak_ctx *c, int rate, const char *admin)
{
    soak_load *l = calloc(1, sizeof *l);
    l->c = c;
    l->rate = rate;
    l->admin = admin;
    l->nworkers = 4;
    pthread_mutex_init(&l->lock, NULL);
    pthread_mutex_init(&l->mail_lock, NULL);
    return l;
}

void soak_load_start(soak_load *l)
{
    for (int i = 0; i < l->nworkers; i++)
        pthread_create(&l->workers[i], NULL, worker, l);
}

void soak_load_progress(soak_load *l)
{
    long acc = 0, sent = 0, none = 0;
    pthread_mutex_lock(&l->lock);
    for (int op = 0; op < NOPS; op++) {
        acc += l->count[op][R_ACCEPTED];
        sent += l->count[op][R_SENT] + l->count[op][R_ACCEPTED] + l->count[op][R_REFUSED] +
                l->count[op][R_NO_ANSWER] + l->count[op][R_NOT_YET] + l->count[op][R_UNEXPECTED];
        none += l->count[op][R_NO_ANSWER];
    }
    size_t users = l->nusers;
    pthread_mutex_unlock(&l->lock);
    soak_say("soak: %ld requests, %ld accepted, %ld unanswered, %zu users", sent, acc, none, users);
}

void soak_load_stop(soak_load *l)
{
    l->stop = 1;
    for (int i = 0; i < l->nworkers; i++)
        pthread_join(l->workers[i], NULL);
}

/* ---- after the run ----------------------------------------------------------------------- */

static int keep_first(void *ud, const ew_row *row)
{
    char *out = ud;
    if (row->ncols && row->values[0]) snprintf(out, EW_UUID_LEN + 1, "%s", row->values[0]);
    return 1;
}

/* The statuses of one saga type's instances, by correlation key. */
typedef struct saga_map {
    char (*key)[64]; /* "KEY STATUS" */
    char (*status)[16];
    size_t n, cap;
} saga_map;

static int add_saga(void *ud, const ew_row *row)
{
    saga_map *m = ud;
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 1024;
        m->key = realloc(m->key, m->cap * sizeof *m->key);
        m->status = realloc(m->status, m->cap * sizeof *m->status);
    }
    snprintf(m->key[m->n], sizeof m->key[0], "%s", row->values[0] ? row->values[0] : "");
    snprintf(m->status[m->n], sizeof m->status[0], "%s", row->values[1] ? row->values[1] : "");
    m->n++;
    return 0;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* A map of saga_type's instances: sorted by key for saga_status (keys and statuses apart). */
static void saga_load(const char *type, saga_map *m)
{
    m->n = 0;
    const char *p[] = {type};
    soak_query("eventwire.db",
               "SELECT correlation_key || ' ' || status, '' FROM event_store.sagas WHERE "
               "saga_type = $1",
               p, 1, add_saga, m);
    /* "key status" sorted as one string: keys are UUIDs of the same length */
    qsort(m->key, m->n, sizeof m->key[0], cmp_key);
}

static const char *saga_status(const saga_map *m, const char *key)
{
    size_t lo = 0, hi = m->n;
    size_t kl = strlen(key);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strncmp(m->key[mid], key, kl);
        if (c == 0) return m->key[mid] + kl + 1;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void saga_free(saga_map *m)
{
    free(m->key);
    free(m->status);
}

/* An export's status over HTTP, into status (16 bytes). */
static void export_status(soak_load *l, const char *id, char *status, size_t n)
{
    char path[128];
    snprintf(path, sizeof path, "/exports/%s", id);
    soak_http r = soak_call(l->c, EXPORT, "GET", path, NULL, l->admin, 10000);
    if (r.status != 200 || !soak_member(&r, "status", status, n))
        snprintf(status, n, "?%ld", r.status);
    soak_http_free(&r);
}

int soak_load_settle(soak_load *l, int64_t timeout_ms)
{
    /* registrations without an answer: auth-service's database says */
    for (size_t i = 0; i < l->nusers; i++) {
        user *u = l->users[i];
        if (u->state != U_UNSURE) continue;
        char id[EW_UUID_LEN + 1] = "";
        const char *p[] = {u->name};
        soak_query("auth-service.db",
                   "SELECT user_id FROM event_store.auth_users WHERE username = $1", p, 1,
                   keep_first, id);
        if (id[0]) {
            snprintf(u->id, sizeof u->id, "%s", id);
            u->state = U_ACTIVE;
        } else {
            u->state = U_NONE;
        }
    }
    /* reset requests without an answer: made when auth-service's database has them */
    for (size_t i = 0; i < l->nusers; i++) {
        user *u = l->users[i];
        if (u->state != U_ACTIVE || !u->reset_pending || !u->reset_unsure) continue;
        if (soak_count("auth-service.db",
                       "SELECT count(*) FROM event_store.auth_password_resets WHERE user_id = $1",
                       u->id) == 0)
            u->reset_pending = false;
    }
    /* deletions without an answer: asked again, as an admin */
    for (size_t i = 0; i < l->nusers; i++) {
        user *u = l->users[i];
        if (u->state != U_DELETE_UNSURE) continue;
        char path[128];
        snprintf(path, sizeof path, "/auth/users/%s", u->id);
        for (int tries = 0; tries < 20; tries++) {
            soak_http r = soak_call(l->c, AUTH, "DELETE", path, NULL, l->admin, 10000);
            long st = r.status;
            if (st == 202 && soak_member(&r, "request_id", u->deletion, sizeof u->deletion))
                u->state = U_DELETING;
            else if (st == 404)
                u->state = U_GONE;
            soak_http_free(&r);
            if (u->state != U_DELETE_UNSURE) break;
            sleep(1);
        }
    }
    int64_t end = soak_ms() + timeout_ms;
    int pending = 0;
    saga_map reg = {0}, del = {0};
    for (;;) {
        pending = 0;
        saga_load("UserRegistration", &reg);
        saga_load("UserDeletion", &del);
        for (size_t i = 0; i < l->nusers; i++) {
            user *u = l->users[i];
            if (u->state == U_ACTIVE || u->state == U_DELETING) {
                const char *st = saga_status(&reg, u->id);
                if (!st || !strcmp(st, "running") || !strcmp(st, "compensating")) pending++;
            }
            if (u->state == U_DELETING) {
                const char *st = saga_status(&del, u->deletion);
                if (!st || !strcmp(st, "running") || !strcmp(st, "compensating")) pending++;
            }
            /* a reset the user asked for is finished as a user would: with the mail's token
             * (a PasswordReset saga otherwise waits for its token's expiry) */
            if (u->state == U_ACTIVE && u->reset_pending) {
                op_confirm_user(l, u);
                if (u->reset_pending) pending++;
            }
            for (int k = 0; u->state == U_ACTIVE && k < u->nexports; k++) {
                char st[32];
                export_status(l, u->exports[k], st, sizeof st);
                if (strcmp(st, "completed") && strcmp(st, "failed")) pending++;
            }
        }
        if (!pending || soak_ms() > end) break;
        soak_say("soak: settling, %d outcomes pending", pending);
        sleep(2);
    }
    saga_free(&reg);
    saga_free(&del);
    return pending;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void soak_load_report(soak_load *l)
{
    soak_ctx *c = l->c;
    long accepted = 0, unexpected = 0;
    char name[128];
    for (int op = 0; op < NOPS; op++)
        for (int res = R_ACCEPTED; res < NRES; res++) {
            snprintf(name, sizeof name, "requests.%s.%s", op_names[op], res_names[res]);
            soak_figure(c, name, l->count[op][res], "count");
            if (res == R_ACCEPTED) accepted += l->count[op][res];
            if (res == R_UNEXPECTED) unexpected += l->count[op][res];
        }
    soak_figure(c, "requests_accepted", accepted, "count");
    if (l->nlat) {
        qsort(l->lat_ms, l->nlat, sizeof *l->lat_ms, cmp_double);
        soak_figure(c, "request.p50", l->lat_ms[l->nlat / 2], "ms");
        soak_figure(c, "request.p99", l->lat_ms[l->nlat * 99 / 100], "ms");
    }
    soak_check(c, accepted > 0, "requests were accepted", "%ld", accepted);
    soak_check(c, unexpected == 0, "no unexpected answer", "%ld", unexpected);

    /* registrations: every user has a completed registration saga */
    saga_map reg = {0}, del = {0};
    saga_load("UserRegistration", &reg);
    saga_load("UserDeletion", &del);
    long registered = 0, completed = 0, unsure = 0, deleting = 0, deleted = 0, gone = 0;
    for (size_t i = 0; i < l->nusers; i++) {
        user *u = l->users[i];
        if (u->state == U_NONE) continue;
        registered++;
        const char *st = saga_status(&reg, u->id);
        if (st && !strcmp(st, "completed"))
            completed++;
        else if (l->nunexpected_shown++ < 40)
            soak_say("soak: %s (%s): registration saga %s", u->name, u->id, st ? st : "missing");
        if (u->state == U_DELETING) {
            deleting++;
            const char *ds = saga_status(&del, u->deletion);
            if (ds && !strcmp(ds, "completed"))
                deleted++;
            else
                soak_say("soak: %s: deletion saga %s", u->name, ds ? ds : "missing");
        }
        if (u->state == U_GONE) gone++;
        if (u->state == U_UNSURE || u->state == U_DELETE_UNSURE) unsure++;
    }
    soak_figure(c, "users_registered", registered, "count");
    soak_figure(c, "registration_sagas_completed", completed, "count");
    soak_check(c, registered == completed && registered > 0,
               "registration sagas completed = users registered", "%ld of %ld", completed,
               registered);
    soak_check(c, unsure == 0, "every unanswered request resolved", "%ld not", unsure);
    long in_auth = soak_count("auth-service.db",
                              "SELECT count(*) FROM event_store.auth_users WHERE username LIKE "
                              "'soak%'",
                              NULL);
    soak_check(c, in_auth == registered - deleting - gone,
               "auth-service holds every registered user that was not deleted",
               "%ld rows, %ld users", in_auth, registered - deleting - gone);
    soak_figure(c, "deletions_accepted", deleting, "count");
    soak_figure(c, "deletions_completed", deleted, "count");
    soak_check(c, deleted == deleting, "every accepted deletion completed", "%ld of %ld", deleted,
               deleting);
    /* the deleted are unknown to auth-service's API */
    long visible = 0;
    for (size_t i = 0; i < l->nusers; i++) {
        user *u = l->users[i];
        if (u->state != U_DELETING && u->state != U_GONE) continue;
        char path[128];
        snprintf(path, sizeof path, "/auth/users/%s", u->id);
        soak_http r = soak_call(c, AUTH, "GET", path, NULL, l->admin, 10000);
        if (r.status != 404) visible++;
        soak_http_free(&r);
    }
    soak_check(c, visible == 0, "no deleted user is found by GET /auth/users/ID", "%ld are",
               visible);
    saga_free(&reg);
    saga_free(&del);

    /* exports: completed, with a document holding the user */
    long exports = 0, with_doc = 0;
    for (size_t i = 0; i < l->nusers; i++) {
        user *u = l->users[i];
        if (u->state != U_ACTIVE) continue;
        for (int k = 0; k < u->nexports; k++) {
            exports++;
            char path[160];
            snprintf(path, sizeof path, "/exports/%s", u->exports[k]);
            soak_http r = soak_call(c, EXPORT, "GET", path, NULL, l->admin, 10000);
            char st[32] = "", url[512] = "";
            soak_member(&r, "status", st, sizeof st);
            soak_member(&r, "download_url", url, sizeof url);
            soak_http_free(&r);
            const char *link = strstr(url, "/exports/");
            if (strcmp(st, "completed") || !link) {
                soak_say("soak: export %s of %s: %s", u->exports[k], u->name, st);
                continue;
            }
            r = soak_call(c, EXPORT, "GET", link, NULL, l->admin, 10000);
            if (r.status == 200 && strstr(r.body, u->id) && strstr(r.body, u->email))
                with_doc++;
            else
                soak_say("soak: export %s of %s: download %ld", u->exports[k], u->name, r.status);
            soak_http_free(&r);
        }
    }
    soak_figure(c, "exports_accepted", exports, "count");
    soak_figure(c, "exports_completed_with_document", with_doc, "count");
    soak_check(c, exports == with_doc, "every accepted export completed with its document",
               "%ld of %ld", with_doc, exports);

    /* password resets: confirmed ones took effect */
    soak_figure(c, "resets_completed", l->resets_completed, "count");
    soak_figure(c, "logins_with_the_new_password", l->logins_after_reset, "count");
}

/* ---- with the services stopped: the databases and the spool ------------------------------ */

typedef struct status_count {
    soak_ctx *c;
    const char *what;
    long total, stuck;
} status_count;

static int on_saga_status(void *ud, const ew_row *row)
{
    status_count *s = ud;
    char name[128];
    long n = atol(row->values[2]);
    snprintf(name, sizeof name, "sagas.%s.%s", row->values[0], row->values[1]);
    soak_figure(s->c, name, n, "count");
    if (!strcmp(row->values[1], "running") || !strcmp(row->values[1], "compensating"))
        s->stuck += n;
    s->total += n;
    return 0;
}

static int on_dead_letter(void *ud, const ew_row *row)
{
    status_count *s = ud;
    s->total++;
    if (s->total <= 30)
        soak_say("soak: dead letter: group %s, %s, %s attempts, %s: %.300s",
                 row->values[0] ? row->values[0] : "?", row->values[1] ? row->values[1] : "?",
                 row->values[2], row->values[3], row->values[4]);
    return 0;
}

/* Columns that hold copies of whole events, where personal data is for crypto-shredding to
 * make unreadable (not built yet: counted apart, as tests/e2e does). */
static const char *const event_copies[] = {"events.data", "outbox.event", "dead_letter_queue.event",
                                           "saga_parked.event"};

typedef struct grep {
    soak_load *l;
    const char *table;
    long hits, copies;
    char where[512];
} grep;

static bool deleted_user(soak_load *l, int n)
{
    if (n <= 0 || n > (int)l->nusers) return false;
    /* users are numbered in the order they were added */
    for (size_t i = (size_t)n - 1; i < l->nusers; i++)
        if (l->users[i]->n == n)
            return l->users[i]->state == U_DELETING || l->users[i]->state == U_GONE;
    for (size_t i = 0; i < l->nusers; i++)
        if (l->users[i]->n == n)
            return l->users[i]->state == U_DELETING || l->users[i]->state == U_GONE;
    return false;
}

static int grep_row(void *ud, const ew_row *row)
{
    grep *g = ud;
    for (size_t i = 0; i < row->ncols; i++) {
        const char *v = row->values[i];
        for (const char *p = v ? strstr(v, "soak") : NULL; p; p = strstr(p + 4, "soak")) {
            int n = 0, digits = 0;
            const char *q = p + 4;
            while (*q >= '0' && *q <= '9' && digits < 7) {
                n = n * 10 + (*q++ - '0');
                digits++;
            }
            if (digits != 6 || *q != 'z' || !deleted_user(g->l, n)) continue;
            char col[160];
            snprintf(col, sizeof col, "%s.%s", g->table, row->names[i]);
            bool copy = false;
            for (size_t k = 0; k < sizeof event_copies / sizeof event_copies[0]; k++)
                copy = copy || !strcmp(col, event_copies[k]);
            if (copy) {
                g->copies++;
            } else {
                if (!g->hits && strlen(g->where) + strlen(col) + 2 < sizeof g->where) {
                    strcat(g->where, " ");
                    strcat(g->where, col);
                }
                g->hits++;
            }
            break;
        }
    }
    return 0;
}

typedef struct tables {
    char names[64][64];
    int n;
} tables;

static int list_table(void *ud, const ew_row *row)
{
    tables *t = ud;
    if (t->n < 64 && row->values[0]) snprintf(t->names[t->n++], 64, "%s", row->values[0]);
    return 0;
}

void soak_load_report_stopped(soak_load *l)
{
    soak_ctx *c = l->c;
    /* sagas by type and status; stuck = still running or compensating */
    status_count s = {.c = c};
    soak_query(
        "eventwire.db",
        "SELECT saga_type, status, count(*) FROM event_store.sagas GROUP BY 1, 2 ORDER BY 1, 2",
        NULL, 0, on_saga_status, &s);
    soak_figure(c, "sagas_stuck", s.stuck, "count");
    soak_check(c, s.stuck == 0, "no saga stuck", "%ld running or compensating", s.stuck);
    /* dead letters, each printed */
    status_count d = {.c = c};
    soak_query("eventwire.db",
               "SELECT subscriber_group, event_name, attempts, status, error FROM "
               "event_store.dead_letter_queue ORDER BY id",
               NULL, 0, on_dead_letter, &d);
    soak_figure(c, "dead_letters", d.total, "count");
    soak_check(c, d.total == 0, "no dead letter", "%ld (printed above)", d.total);

    /* the mail spool, read afresh: one welcome per remaining user, nothing for the deleted */
    mail_index m = {0};
    mail_scan(&m);
    long min_welcome = -1, max_welcome = 0, mails_of_deleted = 0, users = 0;
    /* a sorted list of (address, kind) for counting */
    char(*keys)[64] = calloc(m.n ? m.n : 1, sizeof *keys);
    for (size_t i = 0; i < m.n; i++)
        snprintf(keys[i], sizeof keys[i], "%s %d", m.v[i].to, m.v[i].kind);
    qsort(keys, m.n, sizeof *keys, cmp_key);
    for (size_t i = 0; i < l->nusers; i++) {
        user *u = l->users[i];
        if (u->state == U_NONE) continue;
        char key[64];
        long welcome = 0, any = 0;
        for (int kind = M_WELCOME; kind <= M_OTHER; kind++) {
            snprintf(key, sizeof key, "%s %d", u->email, kind);
            /* count the equal keys */
            size_t lo = 0, hi = m.n;
            while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (strcmp(keys[mid], key) < 0)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            long k = 0;
            while (lo + (size_t)k < m.n && !strcmp(keys[lo + (size_t)k], key))
                k++;
            any += k;
            if (kind == M_WELCOME) welcome = k;
        }
        if (u->state == U_DELETING || u->state == U_GONE) {
            mails_of_deleted += any;
            continue;
        }
        users++;
        if (min_welcome < 0 || welcome < min_welcome) min_welcome = welcome;
        if (welcome > max_welcome) max_welcome = welcome;
        if (welcome != 1 && l->nunexpected_shown++ < 60)
            soak_say("soak: %s has %ld welcome mails", u->name, welcome);
    }
    free(keys);
    soak_figure(c, "mails", (double)m.n, "count");
    mail_index_release(&m);
    soak_figure(c, "welcome_emails_per_user.min", min_welcome < 0 ? 0 : min_welcome, "count");
    soak_figure(c, "welcome_emails_per_user.max", max_welcome, "count");
    soak_check(c, users == 0 || (min_welcome == 1 && max_welcome == 1),
               "welcome emails per user = 1 exactly", "min %ld, max %ld over %ld users",
               min_welcome, max_welcome, users);
    soak_figure(c, "mails_of_deleted_users", mails_of_deleted, "count");
    soak_check(c, mails_of_deleted == 0, "no mail of a deleted user is left", "%ld",
               mails_of_deleted);

    /* nothing of a deleted user in any database (outside whole-event copies) */
    long hits = 0, copies = 0;
    DIR *dir = opendir("var");
    for (struct dirent *de; dir && (de = readdir(dir));) {
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 3, ".db")) continue;
        tables tl = {0};
        soak_query(de->d_name, "SELECT name FROM event_store.sqlite_master WHERE type = 'table'",
                   NULL, 0, list_table, &tl);
        grep g = {.l = l};
        for (int i = 0; i < tl.n; i++) {
            char sql[128];
            snprintf(sql, sizeof sql, "SELECT * FROM event_store.\"%s\"", tl.names[i]);
            g.table = tl.names[i];
            soak_query(de->d_name, sql, NULL, 0, grep_row, &g);
        }
        if (g.hits) soak_say("soak: var/%s holds deleted users' data in:%s", de->d_name, g.where);
        hits += g.hits;
        copies += g.copies;
    }
    if (dir) closedir(dir);
    soak_figure(c, "deleted_users_data_left", hits, "values");
    soak_figure(c, "deleted_users_data_in_event_copies", copies, "values");
    soak_check(c, hits == 0, "nothing of a deleted user is left outside event copies", "%ld values",
               hits);
}

void soak_load_free(soak_load *l)
{
    for (size_t i = 0; i < l->nusers; i++) {
        free(l->users[i]->token);
        free(l->users[i]);
    }
    free(l->users);
    free(l->lat_ms);
    mail_index_release(&l->mails);
    pthread_mutex_destroy(&l->lock);
    pthread_mutex_destroy(&l->mail_lock);
    free(l);
}
