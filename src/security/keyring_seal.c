/* eventwire — the sealing and opening of events' fields (keyring.h): each personal or secret
 * field encrypted under its subject's data key as an event is sealed or encoded, and decrypted
 * and checked as plaintext as it is unsealed or decoded. The keys come from keyring.c
 * (keyring_impl.h); the cipher is aead.c's, the base64url core/base64's. */
#include <stdlib.h>
#include <string.h>
#include "catalog/event_internal.h"
#include "core/base64.h"
#include "core/buf.h"
#include "security/aead.h"
#include "security/keyring_impl.h"

/* The associated data: what a ciphertext belongs to, so that it cannot be moved elsewhere:
 * "ewenc1|TYPE|FIELD|SUBJECT|EVENT_ID", into buf (AAD_MAX bytes, which every real one fits: a
 * longer one is cut there). */
#define AAD_MAX 512
static size_t aad_of(char *buf, const ew_type_info *t, const ew_field_info *f, const char *subject,
                     size_t subject_len, const char *id)
{
    const char *parts[] = {"ewenc1|", t->type, "|", f->name, "|", subject, "|", id};
    const size_t lens[] = {7, t->type_len, 1, f->name_len, 1, subject_len, 1, strlen(id)};
    size_t n = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        size_t l = lens[i] < AAD_MAX - n ? lens[i] : AAD_MAX - n;
        memcpy(buf + n, parts[i], l);
        n += l;
    }
    return n;
}

/* What sealing the fields of one event needs: whose key, and its subkey for this keyring's
 * nonces (own_subkey). */
typedef struct seal_ctx {
    ew__keyring *k;
    const char *subject;
    size_t subject_len;
    unsigned char sub[KEY_BYTES];
} seal_ctx;

/* The fields of ev that sealing encrypts (*mask, bits by index; 0: none, and nothing else is
 * done), and the key they are encrypted under into c. */
static int seal_begin(ew__keyring *k, const ew_event *ev, uint64_t *mask, seal_ctx *c,
                      ew_error *err)
{
    const ew_type_info *t = ew_event_info(ev);
    if (!(*mask = ew__keyring_clear_fields(ev))) return 0;
    const char *subject = ew__keyring_subject_of(ev);
    if (!subject)
        return ew_error_set(err, EW_EINVAL,
                            "%s has personal data but neither a user_id nor a subject to "
                            "encrypt it for",
                            t->type);
    size_t slen = ew__keyring_subject_len(subject);
    if (!slen)
        return ew_error_set(err, EW_EINVAL,
                            "%s: subject '%.64s' cannot name a data key (1 to %d of A-Z a-z 0-9 "
                            "- _ : @)",
                            t->type, subject, SUBJECT_MAX);
    key_state state;
    unsigned char dek[KEY_BYTES];
    int rc = ew__keyring_get_key(k, subject, true, &state, dek, c->sub, err);
    if (!rc && state == KEY_ERASED) { /* a key nobody keeps */
        crypto_aead_xchacha20poly1305_ietf_keygen(dek);
        own_subkey(k, dek, c->sub);
    }
    sodium_memzero(dek, sizeof dek);
    c->k = k;
    c->subject = subject;
    c->subject_len = slen;
    return rc;
}

/* Appends field f of ev, plaintext p, sealed: "ewenc1.SUBJECT.BASE64URL" of the nonce, the
 * ciphertext and the tag; in quotes when quoted (a JSON string: none of its characters needs
 * escaping). */
static int seal_field(seal_ctx *c, const ew_event *ev, const ew_field_info *f, const char *p,
                      bool quoted, ew_buf *text, ew_error *err)
{
    size_t plen = strlen(p), clen = NONCE_BYTES + plen + TAG_BYTES;
    size_t need = 2 + sizeof EW__SEALED_PREFIX + c->subject_len + EW__B64URL_LEN(clen) + 1;
    if (ew_buf_reserve(text, need)) return ew_error_set(err, EW_ENOMEM, "out of memory");
    unsigned char stack[1024], *ct = clen <= sizeof stack ? stack : malloc(clen);
    if (!ct) return ew_error_set(err, EW_ENOMEM, "out of memory");
    char aad[AAD_MAX];
    size_t alen = aad_of(aad, ew_event_info(ev), f, c->subject, c->subject_len, ew_event_id(ev));
    next_nonce(c->k, ct);
    unsigned char n12[crypto_aead_chacha20poly1305_ietf_NPUBBYTES] = {0};
    memcpy(n12 + 4, ct + NONCE_BYTES - 8, 8);
    ew__aead_encrypt(ct + NONCE_BYTES, (const unsigned char *)p, plen, (const unsigned char *)aad,
                     alen, n12, c->sub);
    char *o = text->data + text->len;
    if (quoted) *o++ = '"';
    memcpy(o, EW__SEALED_PREFIX, sizeof EW__SEALED_PREFIX - 1);
    o += sizeof EW__SEALED_PREFIX - 1;
    memcpy(o, c->subject, c->subject_len);
    o += c->subject_len;
    *o++ = '.';
    o += ew__b64url_encode_public(o, ct, clen);
    if (quoted) *o++ = '"';
    *o = '\0';
    text->len = (size_t)(o - text->data);
    if (ct != stack) free(ct);
    return 0;
}

int ew__keyring_seal_fields(ew__keyring *k, const ew_event *ev, uint64_t *mask,
                            const char *values[64], ew_buf *text, ew_error *err)
{
    seal_ctx c;
    int rc = seal_begin(k, ev, mask, &c, err);
    if (rc || !*mask) return rc;
    const ew_type_info *t = ew_event_info(ev);
    const char *data = ew_event_data_as(ev, t->id);
    ew_buf_reserve(text, 512); /* the fields of most events, in one allocation */
    size_t offs[64];
    for (size_t i = 0; !rc && i < t->nfields && i < 64; i++) {
        if (!((*mask >> i) & 1)) continue;
        const ew_field_info *f = &t->fields[i];
        offs[i] = text->len;
        rc = seal_field(&c, ev, f, *(const char *const *)(const void *)(data + f->offset), false,
                        text, err);
        ew_buf_putc(text, '\0'); /* the values are NUL-separated */
    }
    sodium_memzero(c.sub, sizeof c.sub);
    if (!rc && text->oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < t->nfields && i < 64; i++)
        if ((*mask >> i) & 1) values[i] = text->data + offs[i];
    return rc;
}

int ew__keyring_seal(ew__keyring *k, const ew_event *ev, ew_event **out, ew_error *err)
{
    uint64_t mask;
    const char *values[64];
    ew_buf text;
    ew_buf_init(&text);
    int rc = ew__keyring_seal_fields(k, ev, &mask, values, &text, err);
    if (!rc && !mask) *out = ew_event_ref(ev);
    if (!rc && mask) rc = ew__event_replace(ev, mask, values, mask, 0, out, err);
    ew_buf_release(&text);
    return rc;
}

/* ew__sealer's seal(): the sealed field as a JSON string. Its characters (the prefix, a subject
 * that ew__keyring_subject_len() passed, base64url) need no escaping: the bytes are those
 * ew_event_encode() writes for the sealed event. */
static int seal_json(void *ud, const ew_event *ev, const ew_field_info *f, const char *p, ew_buf *b,
                     ew_error *err)
{
    return seal_field(ud, ev, f, p, true, b, err);
}

int ew__keyring_encode(ew__keyring *k, const ew_event *ev, char **out, size_t *out_len,
                       ew_error *err)
{
    uint64_t mask;
    seal_ctx c;
    int rc = seal_begin(k, ev, &mask, &c, err);
    if (rc) return rc;
    if (!mask) return ew_event_encode(ev, out, out_len, err);
    ew__sealer s = {.fields = mask, .seal = seal_json, .ud = &c};
    rc = ew__event_encode_sealed(ev, &s, out, out_len, err);
    sodium_memzero(c.sub, sizeof c.sub);
    return rc;
}

/* What opening the fields of one event needs. Its fields are nearly always one subject's: the
 * key is looked up once. */
typedef struct open_ctx {
    ew__keyring *k;
    char last[SUBJECT_MAX + 1]; /* the subject of dek, or "" */
    key_state state;
    /* dek's subkey for this keyring's nonce prefix, and for the last other prefix met (the
     * publisher's: every field it encrypted has it) */
    unsigned char dek[KEY_BYTES], sub[KEY_BYTES], other[KEY_BYTES], other_prefix[NONCE_BYTES - 8];
    bool have_other;
} open_ctx;

static void open_end(open_ctx *c)
{
    sodium_memzero(c->dek, sizeof c->dek);
    sodium_memzero(c->sub, sizeof c->sub);
    sodium_memzero(c->other, sizeof c->other);
}

/* Appends the plaintext of field f (of an event of this type and id), sealed as tok, and a
 * NUL: 0; 1 when its subject's key was destroyed (nothing appended); < 0 with err. */
static int open_field(open_ctx *c, const ew_type_info *t, const ew_field_info *f, const char *id,
                      const char *tok, ew_buf *text, ew_error *err)
{
    const char *subj = tok + sizeof EW__SEALED_PREFIX - 1, *dot = strchr(subj, '.');
    char subject[SUBJECT_MAX + 1];
    if (!dot || dot == subj || (size_t)(dot - subj) > SUBJECT_MAX)
        return ew_error_set(err, EW_ECRYPTO,
                            "%s: data.%s is not " EW__SEALED_PREFIX "SUBJECT.CIPHERTEXT", t->type,
                            f->name);
    memcpy(subject, subj, (size_t)(dot - subj));
    subject[dot - subj] = '\0';
    const char *enc = dot + 1;
    size_t enclen = strlen(enc), cap = enclen * 3 / 4 + 3, clen = 0;
    unsigned char stack[1024], *ct = cap <= sizeof stack ? stack : malloc(cap);
    if (!ct) return ew_error_set(err, EW_ENOMEM, "out of memory");
    int rc = 0;
    if (ew__b64url_decode_public(ct, enc, enclen, &clen) != 0 || clen < NONCE_BYTES + TAG_BYTES)
        rc = ew_error_set(err, EW_ECRYPTO, "%s: data.%s: the ciphertext is not base64url", t->type,
                          f->name);
    if (!rc && strcmp(subject, c->last) != 0) {
        if (!(rc = ew__keyring_get_key(c->k, subject, false, &c->state, c->dek, c->sub, err)))
            memcpy(c->last, subject, sizeof c->last);
        c->have_other = false;
    }
    if (!rc && c->state == KEY_NONE)
        rc = ew_error_set(err, EW_ECRYPTO,
                          "%s: data.%s is encrypted for subject %.64s, whose key this key store "
                          "never had",
                          t->type, f->name, subject);
    if (!rc && c->state == KEY_ERASED) rc = 1;
    if (!rc) {
        size_t plen = clen - NONCE_BYTES - TAG_BYTES;
        char aad[AAD_MAX];
        size_t alen = aad_of(aad, t, f, subject, (size_t)(dot - subj), id);
        /* the field's nonce is ct's first 24 bytes: its prefix picks the subkey */
        const unsigned char *key = c->sub;
        if (memcmp(ct, c->k->nonce_prefix, sizeof c->k->nonce_prefix) != 0) {
            if (!c->have_other || memcmp(ct, c->other_prefix, sizeof c->other_prefix) != 0) {
                crypto_core_hchacha20(c->other, ct, c->dek, NULL);
                memcpy(c->other_prefix, ct, sizeof c->other_prefix);
                c->have_other = true;
            }
            key = c->other;
        }
        unsigned char n12[crypto_aead_chacha20poly1305_ietf_NPUBBYTES] = {0};
        memcpy(n12 + 4, ct + NONCE_BYTES - 8, 8);
        if (ew_buf_reserve(text, plen + 1)) {
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        } else if (ew__aead_decrypt((unsigned char *)text->data + text->len, ct + NONCE_BYTES,
                                    clen - NONCE_BYTES, (const unsigned char *)aad, alen, n12,
                                    key) != 0) {
            rc = ew_error_set(err, EW_ECRYPTO,
                              "%s: data.%s does not authenticate under subject %.64s's key "
                              "(tampered, or moved from another event or field)",
                              t->type, f->name, subject);
        } else if (memchr(text->data + text->len, '\0', plen)) {
            rc = ew_error_set(err, EW_EDATA, "%s: data.%s holds a NUL", t->type, f->name);
        } else {
            text->data[text->len + plen] = '\0';
            text->len += plen + 1;
        }
    }
    if (ct != stack) free(ct);
    return rc;
}

int ew__keyring_unseal(ew__keyring *k, const ew_event *ev, ew_event **out, ew_error *err)
{
    const ew_type_info *t = ew_event_info(ev);
    const char *data = ew_event_data_as(ev, t->id);
    uint64_t mask = ew__event_sealed(ev), erased = 0;
    if (!mask) {
        *out = ew_event_ref(ev);
        return 0;
    }
    const char *values[64];
    ew_buf text;
    ew_buf_init(&text);
    size_t offs[64];
    int rc = 0;
    open_ctx c = {.k = k, .state = KEY_NONE};
    for (size_t i = 0; !rc && i < t->nfields && i < 64; i++) {
        if (!((mask >> i) & 1)) continue;
        const ew_field_info *f = &t->fields[i];
        offs[i] = text.len;
        rc = open_field(&c, t, f, ew_event_id(ev),
                        *(const char *const *)(const void *)(data + f->offset), &text, err);
        if (rc == 1) {
            rc = 0;
            erased |= UINT64_C(1) << i;
            values[i] = f->kind == EW_FIELD_OBJECT ? "{}" : "";
        }
    }
    open_end(&c);
    if (!rc) {
        for (size_t i = 0; i < t->nfields && i < 64; i++)
            if (((mask >> i) & 1) && !((erased >> i) & 1)) values[i] = text.data + offs[i];
        rc = ew__event_replace(ev, mask, values, 0, erased, out, err);
        /* the ciphertext as it came stays with the plaintext: what its tag covers, what a dead
         * letter of it keeps */
        if (!rc) ew__event_keep_received(*out, ev);
    }
    if (text.data) sodium_memzero(text.data, text.len);
    ew_buf_release(&text);
    return rc;
}

/* ew__opener's open(). */
static int open_json(void *ud, const ew_type_info *t, const ew_field_info *f, const char *id,
                     const char *token, ew_buf *plain, ew_error *err)
{
    return open_field(ud, t, f, id, token, plain, err);
}

int ew__keyring_decode(ew__keyring *k, const char *json, size_t len, const ew_decode_opts *opts,
                       ew_event **out, ew_error *err)
{
    open_ctx c = {.k = k, .state = KEY_NONE};
    ew__opener o = {.open = open_json, .ud = &c};
    ew_event *ev;
    int rc = ew__event_decode_opened(&ev, json, len, opts, &o, err);
    open_end(&c);
    if (rc) return rc;
    if (ew_event_encrypted(ev)) { /* upcast from an older version: opened as upcast */
        ew_event *plain;
        rc = ew__keyring_unseal(k, ev, &plain, err);
        ew_event_unref(ev);
        if (rc) return rc;
        ev = plain;
    }
    *out = ev;
    return 0;
}
