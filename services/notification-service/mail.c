/* notification-service: composing RFC 5322 messages and delivering them, over SMTP (libcurl) when
 * SMTP_URL is set, else as .eml files in MAIL_DIR (a spool that tests and developers read). */
#include <curl/curl.h>
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "notification.h"
#include "core/files.h"

/* ---- settings -------------------------------------------------------------------------------- */

/* MAIL_FROM is "addr" or "Display Name <addr>". */
static int parse_from(notif *n, const char *v, ew_error *err)
{
    for (const char *c = v; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return ew_error_set(err, EW_ECONFIG, "MAIL_FROM: must not hold control characters");
    const char *lt = strchr(v, '<');
    char *addr;
    if (lt) {
        const char *gt = strchr(lt, '>');
        if (!gt || gt[1] != '\0')
            return ew_error_set(err, EW_ECONFIG, "MAIL_FROM: '%.128s' is not 'Name <address>'", v);
        addr = strndup(lt + 1, (size_t)(gt - lt - 1));
    } else {
        addr = strdup(v);
    }
    if (!addr) return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (!ew_field_valid(EW_FIELD_EMAIL, addr)) {
        ew_error_set(err, EW_ECONFIG, "MAIL_FROM: '%.128s' is not a valid address", addr);
        free(addr);
        return EW_ECONFIG;
    }
    n->from_addr = addr;
    n->from_header = strdup(v);
    n->domain = strdup(strchr(addr, '@') + 1);
    if (!n->from_header || !n->domain) return ew_error_set(err, EW_ENOMEM, "out of memory");
    return 0;
}

int notif_mail_setup(notif *n, ew_error *err)
{
    const ew_config *c = svc_config(n->s);
    const char *url = ew_config_get(c, "SMTP_URL");
    if (url && *url) {
        if (strncmp(url, "smtp://", 7) && strncmp(url, "smtps://", 8))
            return ew_error_set(err, EW_ECONFIG,
                                "SMTP_URL: must be smtp://host:port or smtps://host:port");
        /* TLS (STARTTLS, or smtps://) is required, unless the URL says otherwise in so many
         * words: ?tls=none, its only query */
        const char *q = strchr(url, '?');
        if (q && strcmp(q, "?tls=none"))
            return ew_error_set(err, EW_ECONFIG,
                                "SMTP_URL: the only query it takes is ?tls=none (no TLS)");
        n->smtp_clear = q != NULL;
        if (!(n->smtp_url = q ? strndup(url, (size_t)(q - url)) : strdup(url)))
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        /* a user in the authority (smtp://user:password@host): the password must never cross
         * the network in the clear */
        const char *auth = n->smtp_url + strcspn(n->smtp_url, ":") + 3;
        const char *at = strchr(auth, '@');
        n->smtp_login = at && at < auth + strcspn(auth, "/?#");
        if (n->smtp_login && n->smtp_clear)
            return ew_error_set(err, EW_ECONFIG,
                                "SMTP_URL: a user with ?tls=none would send its password in the "
                                "clear");
        if (n->smtp_clear && !strncmp(url, "smtps://", 8))
            return ew_error_set(err, EW_ECONFIG,
                                "SMTP_URL: smtps:// is TLS; ?tls=none contradicts it");
    }
    const char *ca = ew_config_get(c, "SMTP_CA_FILE");
    if (ca && *ca) {
        if (access(ca, R_OK) != 0)
            return ew_error_set(err, EW_ECONFIG, "SMTP_CA_FILE: cannot read %s: %s", ca,
                                strerror(errno));
        if (!(n->smtp_ca = strdup(ca))) return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    int rc = parse_from(n, ew_config_get(c, "MAIL_FROM"), err);
    if (rc) return rc;
    n->smtp_timeout_ms = (long)ew_config_get_int(c, "SMTP_TIMEOUT_MS");
    const char *dir = ew_config_get(c, "MAIL_DIR");
    if (!(n->mail_dir = strdup(dir))) return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (!n->smtp_url && ew_mkdirs(dir))
        return ew_error_set(err, EW_EIO, "MAIL_DIR %s: cannot create it: %s", dir, strerror(errno));
    if (n->smtp_clear)
        svc_log(n->s, EW_LOG_WARN,
                "mail goes over SMTP in the clear (SMTP_URL ends in ?tls=none), from %s",
                n->from_addr);
    else if (n->smtp_url)
        svc_log(n->s, EW_LOG_INFO, "mail goes over SMTP (SMTP_URL, TLS required), from %s",
                n->from_addr);
    else
        svc_log(n->s, EW_LOG_INFO, "mail is written as .eml files into %s (SMTP_URL is not set)",
                dir);
    return 0;
}

void notif_mail_teardown(notif *n)
{
    free(n->smtp_url);
    free(n->smtp_ca);
    n->smtp_ca = NULL;
    free(n->from_header);
    free(n->from_addr);
    free(n->domain);
    free(n->mail_dir);
    n->smtp_url = n->from_header = n->from_addr = n->domain = n->mail_dir = NULL;
}

void notif_message_id(const char *template_name, const char *ref, char out[NOTIF_ID_LEN + 1])
{
    unsigned char h[16];
    crypto_generichash_state st;
    crypto_generichash_init(&st, (const unsigned char *)"eventwire-mail", 14, sizeof h);
    crypto_generichash_update(&st, (const unsigned char *)template_name, strlen(template_name) + 1);
    crypto_generichash_update(&st, (const unsigned char *)ref, strlen(ref));
    crypto_generichash_final(&st, h, sizeof h);
    h[6] = (unsigned char)((h[6] & 0x0f) | 0x80); /* UUID version 8: custom */
    h[8] = (unsigned char)((h[8] & 0x3f) | 0x80); /* RFC 9562 variant */
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < sizeof h; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[h[i] >> 4];
        out[o++] = hex[h[i] & 15];
    }
    out[o] = '\0';
}

/* ---- composing ------------------------------------------------------------------------------- */

static int is_ascii_printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

/* A header value: control characters become spaces (no header injection), and text that is not
 * ASCII becomes RFC 2047 encoded-words of at most 75 characters, each holding whole UTF-8
 * characters, folded onto continuation lines. */
static void put_header_text(ew_buf *b, const char *s)
{
    size_t n = strlen(s);
    char *clean = malloc(n + 1);
    if (!clean) {
        b->oom = 1;
        return;
    }
    for (size_t i = 0; i <= n; i++)
        clean[i] = (i < n && ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)) ? ' ' : s[i];
    if (is_ascii_printable(clean)) {
        ew_buf_puts(b, clean);
        free(clean);
        return;
    }
    const size_t chunk = 45; /* 60 base64 characters + 12 of framing */
    for (size_t i = 0; i < n;) {
        size_t len = n - i < chunk ? n - i : chunk;
        /* back off to a character boundary (continuation bytes are 10xxxxxx) */
        while (len < n - i && len > 0 && ((unsigned char)clean[i + len] & 0xc0) == 0x80)
            len--;
        if (len == 0) len = n - i < chunk ? n - i : chunk;
        char b64[sodium_base64_ENCODED_LEN(45, sodium_base64_VARIANT_ORIGINAL)];
        sodium_bin2base64(b64, sizeof b64, (const unsigned char *)clean + i, len,
                          sodium_base64_VARIANT_ORIGINAL);
        if (i) ew_buf_puts(b, "\r\n ");
        ew_buf_printf(b, "=?UTF-8?B?%s?=", b64);
        i += len;
    }
    free(clean);
}

/* The body: \n becomes CRLF, other control characters but tab become spaces. */
static void put_body(ew_buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n')
            ew_buf_puts(b, "\r\n");
        else if (c == '\r')
            continue;
        else if ((c < 0x20 && c != '\t') || c == 0x7f)
            ew_buf_putc(b, ' ');
        else
            ew_buf_putc(b, (char)c);
    }
    if (b->len < 2 || strcmp(b->data + b->len - 2, "\r\n")) ew_buf_puts(b, "\r\n");
}

static char *compose(notif *n, const notif_mail *m, size_t *len)
{
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_printf(&b, "From: %s\r\n", n->from_header);
    ew_buf_printf(&b, "To: %s\r\n", m->to);
    ew_buf_puts(&b, "Subject: ");
    put_header_text(&b, m->subject);
    ew_buf_printf(&b, "\r\nDate: %s\r\n", date);
    ew_buf_printf(&b, "Message-ID: <%s@%s>\r\n", m->message_id, n->domain);
    ew_buf_puts(&b, "MIME-Version: 1.0\r\n"
                    "Content-Type: text/plain; charset=utf-8\r\n"
                    "Content-Transfer-Encoding: 8bit\r\n");
    ew_buf_printf(&b, "X-Eventwire-Template: %s\r\n\r\n", m->template_name);
    put_body(&b, m->body);
    return ew_buf_steal(&b, len);
}

/* ---- delivering ------------------------------------------------------------------------------ */

/* Written beside and renamed into place (ew_file_replace), so that a reader never sees half a
 * message and a retried send of the same message replaces it. */
static int deliver_file(notif *n, const notif_mail *m, const char *text, size_t len, char *why,
                        size_t why_len)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.eml", n->mail_dir, m->message_id);
    if (ew_file_replace(path, text, len, 0600) == 0) return 0;
    snprintf(why, why_len, "cannot write %.300s: %s", path, strerror(errno));
    return -1;
}

typedef struct upload {
    const char *p;
    size_t left;
} upload;

static size_t read_cb(char *buf, size_t size, size_t nmemb, void *ud)
{
    upload *u = ud;
    size_t n = size * nmemb;
    if (n > u->left) n = u->left;
    memcpy(buf, u->p, n);
    u->p += n;
    u->left -= n;
    return n;
}

/* One SMTP transaction per message: libcurl sends EHLO, STARTTLS (and gives up when the server
 * does not offer it, unless the URL ends in ?tls=none: no message in the clear), MAIL FROM, RCPT
 * TO and DATA (dot-stuffing the text), and logs in with the user and password of the URL when it
 * has them. The server's certificate is verified (SMTP_CA_FILE, else the system's authorities). */
static int deliver_smtp(notif *n, const notif_mail *m, const char *text, size_t len, char *why,
                        size_t why_len)
{
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(why, why_len, "libcurl: cannot make a handle");
        return -1;
    }
    char from[300], to[300], eb[CURL_ERROR_SIZE] = "";
    snprintf(from, sizeof from, "<%s>", n->from_addr);
    snprintf(to, sizeof to, "<%s>", m->to);
    struct curl_slist *rcpt = curl_slist_append(NULL, to);
    upload u = {text, len};
    curl_easy_setopt(c, CURLOPT_URL, n->smtp_url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, n->smtp_timeout_ms);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, n->smtp_timeout_ms);
    curl_easy_setopt(c, CURLOPT_USE_SSL, (long)(n->smtp_clear ? CURLUSESSL_NONE : CURLUSESSL_ALL));
    if (n->smtp_ca) curl_easy_setopt(c, CURLOPT_CAINFO, n->smtp_ca);
    curl_easy_setopt(c, CURLOPT_MAIL_FROM, from);
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
    curl_easy_setopt(c, CURLOPT_READDATA, &u);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, eb);
    CURLcode rc = rcpt ? curl_easy_perform(c) : CURLE_OUT_OF_MEMORY;
    curl_slist_free_all(rcpt);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        snprintf(why, why_len, "SMTP: %s", eb[0] ? eb : curl_easy_strerror(rc));
        return -1;
    }
    return 0;
}

int notif_send(notif *n, const notif_mail *m, char *why, size_t why_len)
{
    size_t len = 0;
    char *text = compose(n, m, &len);
    if (!text) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    int rc = n->smtp_url ? deliver_smtp(n, m, text, len, why, why_len)
                         : deliver_file(n, m, text, len, why, why_len);
    free(text);
    return rc;
}

void notif_mail_forget(notif *n, const char *message_id)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.eml", n->mail_dir, message_id);
    if (unlink(path) && errno != ENOENT)
        svc_log(n->s, EW_LOG_WARN, "cannot remove %s: %s", path, strerror(errno));
}
