/* eventwire — configuration.
 *
 * A configuration is an object set by name and value (librdkafka's rd_kafka_conf_set): every
 * entry is checked when it is set, so a bad value is refused at start with its name and the
 * reason. The names are the environment variables of the system (EVENT_BUS_TYPE, ...);
 * ew_config_from_env() reads all of them at once. ew_config_describe() lists the library's
 * settings with their defaults and meaning; a program adds its own with ew_config_define(), and
 * they are then checked, read and shown the same way. docs/configuration.md and `ewctl config`
 * print those lists.
 *
 * Thread safety: a config is not locked. Set it up on one thread, then share it read-only. */
#ifndef EVENTWIRE_CONFIG_H
#define EVENTWIRE_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include "eventwire/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_config ew_config;

/* How a setting's value is checked when it is set. */
typedef enum ew_setting_type {
    EW_SETTING_STRING = 0, /* any text; empty only when the default is empty (then: unset) */
    EW_SETTING_ENUM,       /* one of the words of allowed, separated by '|' */
    EW_SETTING_INT,        /* a whole number in min..max */
    EW_SETTING_BOOL,       /* true|false (also 1|0, yes|no, on|off) */
    EW_SETTING_URL,        /* scheme:rest; empty only when the default is empty (then: unset) */
    EW_SETTING_NAME,       /* a-z, 0-9, '.', '_' and '-' */
    EW_SETTING_PAIRS,      /* key=value[,key=value...]; secret-looking keys' values shown *** */
    EW_SETTING_SECRET      /* at least 16 characters, or empty; always shown *** */
} ew_setting_type;

/* One setting: the library's (ew_config_describe) or a program's own (ew_config_define). */
typedef struct ew_setting {
    const char *name;    /* the environment variable, e.g. "EVENT_BUS_TYPE" */
    const char *def;     /* the default value as text; "" for none */
    const char *allowed; /* what a value may be, in words, e.g. "memory|sqlite|redis" */
    const char *doc;     /* one sentence or two */
    ew_setting_type type;
    int64_t min, max; /* EW_SETTING_INT */
} ew_setting;

/* A new configuration holding every default. Caller frees with ew_config_free(). */
int ew_config_new(ew_config **out, ew_error *err);

/* A deep copy. Caller frees with ew_config_free(). */
int ew_config_dup(ew_config **out, const ew_config *cfg, ew_error *err);

void ew_config_free(ew_config *cfg);

/* Sets one entry. EW_ECONFIG with "NAME: reason" when the name is unknown or the value is not
 * allowed; the entry keeps its previous value then. value is copied. */
int ew_config_set(ew_config *cfg, const char *name, const char *value, ew_error *err);

/* Sets every known entry that the environment defines. Stops at the first bad value, naming it. */
int ew_config_from_env(ew_config *cfg, ew_error *err);

/* The value of an entry (borrowed, valid until the entry is set again or cfg is freed); NULL for
 * an unknown name. */
const char *ew_config_get(const ew_config *cfg, const char *name);

/* The value of an entry as it may be shown (ewctl config, logs): the password of a URL
 * (scheme://user:***@host) and of a password= parameter, and in key=value lists the values of
 * keys that name a password, a secret, a key or credentials, are written ***. Into buf (n bytes,
 * NUL included; cut when longer); returns buf, or NULL for an unknown name. */
const char *ew_config_shown(const ew_config *cfg, const char *name, char *buf, size_t n);

/* url with the password of its user info and of a password= parameter written ***, into buf
 * (n bytes, NUL included; cut when longer). Returns buf. For logs and messages. */
const char *ew_url_redact(const char *url, char *buf, size_t n);

/* The value of a numeric or boolean entry (booleans are 0 or 1). Unknown names give 0. */
int64_t ew_config_get_int(const ew_config *cfg, const char *name);

/* The library's settings: entry i for i < n, or NULL past the end. Static storage. */
const ew_setting *ew_config_describe(int i);

/* Adds a program's own settings to cfg, so that they are set, checked, read from the
 * environment and shown exactly as the library's are: n entries of table, which must outlive
 * cfg (a static table). Each default is checked and set. EW_ECONFIG naming the setting when its
 * name is already known to cfg or its default fails its own check; then cfg is unchanged. The
 * definitions go with ew_config_dup(). */
int ew_config_define(ew_config *cfg, const ew_setting *table, size_t n, ew_error *err);

/* Every setting cfg knows: the library's, then those defined on it, in order; NULL past the end.
 * Borrowed: valid as long as cfg. */
const ew_setting *ew_config_setting(const ew_config *cfg, int i);

#ifdef __cplusplus
}
#endif
#endif
