/* eventwire — the URL parsers of the bus backends, shared with the tests and the fuzzers
 * (tests/fuzz/fuzz_url.c): each backend parses its own URL at open, and these are those parsers,
 * not copies. Internal: not part of the API. */
#ifndef EW_BUS_URL_H
#define EW_BUS_URL_H

#include <stdbool.h>
#include "eventwire/error.h"

/* REDIS_EVENT_URL, parsed: redis://[user:password@]host[:port][/db], or rediss://... (TLS). */
typedef struct ew__redis_url {
    bool tls;       /* rediss:// */
    char host[256]; /* without the brackets of an IPv6 literal */
    int port;       /* 6379 when left out */
    char user[128], pass[256];
    bool has_pass; /* AUTH: user and password, or the password alone when user is empty */
    int db;
} ew__redis_url;

/* 0, or EW_ECONFIG naming REDIS_EVENT_URL and what is wrong. Built with the redis backend
 * (EW_HAVE_REDIS) only. */
int ew__redis_url_parse(ew__redis_url *u, const char *url, ew_error *err);

/* RABBITMQ_URL, parsed by librabbitmq's amqp_parse_url() into *ci, which points into *buf (a
 * malloc'ed copy of url that the caller frees, also on failure), plus our checks. 0 or
 * EW_ECONFIG / EW_ENOMEM. Built with the rabbitmq backend (EW_HAVE_RABBITMQ) only. */
struct amqp_connection_info;
int ew__amqp_url_parse(const char *url, char **buf, struct amqp_connection_info *ci, ew_error *err);

/* The sqlite bus's EVENT_STORE_URL: sqlite:PATH naming a file. 0 or EW_ECONFIG. */
int ew__sqlite_bus_url_check(const char *url, ew_error *err);

#endif
