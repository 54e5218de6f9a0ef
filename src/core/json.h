/* eventwire — strict JSON (RFC 8259): a parser into an arena-allocated tree, and a writer.
 *
 * Strict means: one value and nothing after it but white space; no comments, trailing commas,
 * NaN or leading zeros; valid UTF-8 everywhere (no overlongs, surrogates or code points above
 * U+10FFFF, and \u escapes paired correctly); no \u0000 (strings are NUL-terminated C strings);
 * no duplicate member names in an object; nesting no deeper than a limit; input no larger than
 * a limit. Every refusal says what and where ("line 1, column 17: ..."). */
#ifndef EW_CORE_JSON_H
#define EW_CORE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "core/arena.h"
#include "core/buf.h"
#include "eventwire/error.h"

typedef enum ew_json_kind {
    EW_JSON_NULL,
    EW_JSON_FALSE,
    EW_JSON_TRUE,
    EW_JSON_NUMBER,
    EW_JSON_STRING,
    EW_JSON_ARRAY,
    EW_JSON_OBJECT
} ew_json_kind;

typedef struct ew_json ew_json;
struct ew_json {
    ew_json_kind kind;
    const char *key; /* member name when the value is in an object (unescaped, NUL-terminated) */
    size_t key_len;
    ew_json *next; /* next element or member of the parent, NULL at the end */
    /* STRING: the unescaped text (NUL-terminated) and its length.
     * NUMBER: the number's text as written in the input (NUL-terminated) and its length. */
    const char *str;
    size_t len;
    /* NUMBER: its value; is_int when it is an integer that fits int64_t (no fraction or
     * exponent). */
    double num;
    int64_t i64;
    bool is_int;
    /* ARRAY, OBJECT: the first child and how many there are. */
    ew_json *child;
    size_t count;
};

typedef struct ew_json_limits {
    size_t max_bytes; /* 0: no limit */
    int max_depth;    /* 0: EW_JSON_DEPTH. The top-level value is depth 1; each array/object adds
                         one. */
    size_t max_mem;   /* 0: EW_JSON_MEM_FACTOR * input bytes + EW_JSON_MEM_BASE */
} ew_json_limits;

/* The memory a parse may use, in proportion to its input: the tree (a node is 96 bytes, so
 * `[0,0,...]` would take 56 bytes per input byte), its strings and numbers (as the arena rounds
 * them, to 16 bytes) and the hash sets of big objects' member names. Past it the parse stops with
 * EW_ETOOBIG. 16 per byte is about four times what an event takes (the catalog's events take
 * 4.2 on average, 6.2 at most: docs/fuzzing.md); the base lets any small document through. */
#define EW_JSON_MEM_FACTOR 16
#define EW_JSON_MEM_BASE (64 * 1024)

/* Whatever max_depth asks for, nesting is refused beyond this: the parser recurses, and the C
 * stack of a thread must survive 1 MB of '['. */
#define EW_JSON_DEPTH_CAP 512

/* The nesting every reader of events allows by default (the codec, and the backends when they
 * look into a message that did not decode): one value, here. */
#define EW_JSON_DEPTH 64

/* Parses text[0..len) (need not be NUL-terminated) into a tree allocated from arena. lim may be
 * NULL. Errors: EW_ETOOBIG (input over max_bytes, checked first, before reading; or a tree that
 * needs more memory than max_mem, "needs more than N bytes of memory"), EW_EUTF8, EW_EJSON (syntax,
 * also empty input and trailing data), EW_EDUPKEY, EW_EDEPTH; err->msg names the position and the
 * problem. On error nothing is returned but what arena holds is not freed (the arena owns it). */
int ew_json_parse(ew_json **out, const char *text, size_t len, const ew_json_limits *lim,
                  ew_arena *arena, ew_error *err);

/* The member of an object with this name, or NULL (also when obj is not an object). */
const ew_json *ew_json_get(const ew_json *obj, const char *key);

/* Checks that s[0..n) is valid UTF-8 (same rules as the parser). */
bool ew_utf8_valid(const char *s, size_t n);

/* Appends s[0..n) as a JSON string with quotes; escapes '"', '\\' and control characters
 * (\b \f \n \r \t, others as \u00XX); everything else, non-ASCII UTF-8 included, as is. */
void ew_json_write_string(ew_buf *b, const char *s, size_t n);

/* The same for text that may hold anything (a request's path, a header, a message quoting
 * them): each byte that is not part of well-formed UTF-8 is written as U+FFFD, so that the
 * result is always JSON. */
void ew_json_write_string_lossy(ew_buf *b, const char *s, size_t n);

/* Appends v as compact JSON (no white space). Numbers are written as their original text. */
void ew_json_write(ew_buf *b, const ew_json *v);

/* Appends v pretty-printed with indent spaces per level (for humans: ewctl schema show). */
void ew_json_write_pretty(ew_buf *b, const ew_json *v, int indent);

#endif
