/* eventwire — upcasters, one per old version in events.def. A consumer built for the latest
 * version reads every older one: decoding validates the old data against its own version, runs
 * the chain of upcasters, and validates the result against the latest. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "catalog/upcast.h"

static ew_json *new_node(ew_arena *a, ew_json_kind kind)
{
    ew_json *n = ew_arena_alloc(a, sizeof *n);
    if (n) memset(n, 0, sizeof *n);
    if (n) n->kind = kind;
    return n;
}

/* Appends member `key` to object obj. */
static void add_member(ew_json *obj, const char *key, ew_json *v)
{
    v->key = key;
    v->key_len = strlen(key);
    ew_json **p = &obj->child;
    while (*p)
        p = &(*p)->next;
    *p = v;
    obj->count++;
}

/* user.registered v1 → v2: v2 added the roles granted at registration. Every v1 user was
 * registered with the one role there was then, "user". */
static int user_registered_v1(ew_json *data, ew_arena *a, ew_error *err)
{
    ew_json *roles = new_node(a, EW_JSON_ARRAY), *role = new_node(a, EW_JSON_STRING);
    if (!roles || !role) return ew_error_set(err, EW_ENOMEM, "out of memory");
    role->str = "user";
    role->len = 4;
    roles->child = role;
    roles->count = 1;
    add_member(data, "roles", roles);
    return 0;
}

/* user.role_changed v1 → v2: v2 added the optional roles_version. A v1 change does not know it:
 * its data is v2 data as it is, a change applied as the newest when it arrives. */
static int unchanged(ew_json *data, ew_arena *a, ew_error *err)
{
    (void)data, (void)a, (void)err;
    return 0;
}

/* user.tokens_revoked v1 → v2: not_before (Unix seconds) became not_before_ms. A v1 revocation
 * refused tokens with iat < not_before, which are the tokens issued before not_before * 1000 ms. */
static int user_tokens_revoked_v1(ew_json *data, ew_arena *a, ew_error *err)
{
    for (ew_json *m = data->child; m; m = m->next) {
        if (strcmp(m->key, "not_before")) continue;
        /* v1's validation passed: an integer */
        if (m->i64 > INT64_MAX / 1000 || m->i64 < INT64_MIN / 1000)
            return ew_error_set(err, EW_EDATA,
                                "user.tokens_revoked: data.not_before %lld is out "
                                "of range",
                                (long long)m->i64);
        char *text = ew_arena_alloc(a, 24);
        if (!text) return ew_error_set(err, EW_ENOMEM, "out of memory");
        m->i64 *= 1000;
        m->num = (double)m->i64;
        m->len = (size_t)snprintf(text, 24, "%lld", (long long)m->i64);
        m->str = text;
        m->key = "not_before_ms";
        m->key_len = strlen(m->key);
        return 0;
    }
    return ew_error_set(err, EW_EDATA, "user.tokens_revoked: data.not_before is required");
}

static const struct {
    ew_type_id from;
    int (*fn)(ew_json *data, ew_arena *a, ew_error *err);
} upcasters[] = {
    {EW_T_USER_REGISTERED_V1, user_registered_v1},
    {EW_T_USER_ROLE_CHANGED_V1, unchanged},
    {EW_T_USER_TOKENS_REVOKED_V1, user_tokens_revoked_v1},
};

int ew__upcast(const ew_type_info *from, ew_json *data, ew_arena *arena, ew_error *err)
{
    for (size_t i = 0; i < sizeof upcasters / sizeof upcasters[0]; i++)
        if (upcasters[i].from == from->id) return upcasters[i].fn(data, arena, err);
    return ew_error_set(err, EW_EVERSION, "%s version %d has no upcaster to version %d", from->type,
                        from->version, from->version + 1);
}
