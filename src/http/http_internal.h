/* eventwire — the HTTP server's request handling without a socket, for the fuzzers
 * (tests/fuzz/fuzz_http.c) and tests. A request as libmicrohttpd hands it over once it has parsed
 * it (method, decoded path, headers, query arguments, body) goes through the same code as one
 * from the network: routing, 404/405, /healthz, the body limit, JSON parsing and the handler.
 * Internal: not part of the API. */
#ifndef EW_HTTP_INTERNAL_H
#define EW_HTTP_INTERNAL_H

#include <stddef.h>
#include "core/buf.h"
#include "eventwire/http.h"

typedef struct ew__http_input {
    const char *method; /* "GET" */
    const char *path;   /* decoded, without the query */
    /* nheaders name/value pairs: headers[2i] and headers[2i + 1]; the same for query (a value
     * may be NULL there: an argument without '='). Borrowed. */
    const char *const *headers;
    size_t nheaders;
    const char *const *query;
    size_t nquery;
    const char *body;
    size_t body_len;
    size_t chunk; /* the body arrives in pieces of at most this many bytes; 0: in one */
} ew__http_input;

typedef struct ew__http_output {
    int status;      /* the answer's status; 0 when the server closed without one */
    ew_buf body;     /* the answer's body; initialised by ew__http_handle, released by the caller */
    char allow[128]; /* the Allow header of a 405, "" otherwise */
} ew__http_output;

/* Runs one request through s, which has its routes but need not be started. 0, or EW_ENOMEM;
 * EW_EIO when the server would have dropped the connection (MHD_NO). */
int ew__http_handle(ew_http_server *s, const ew__http_input *in, ew__http_output *out);

#endif
