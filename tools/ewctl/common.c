/* ewctl: what several commands share. */
#include <string.h>
#include "ewctl.h"
#include "core/json.h"
#include "eventwire/config.h"

int ewctl_open_store(ew_store **st)
{
    ew_config *cfg = NULL;
    ew_error err = {0};
    int rc = ew_config_new(&cfg, &err);
    if (rc == 0) rc = ew_config_from_env(cfg, &err);
    if (rc == 0) rc = ew_store_open(st, &(ew_store_options){.config = cfg}, &err);
    ew_config_free(cfg);
    if (rc) return ewctl_fail(1, "cannot open the event store: %s", err.msg);
    return 0;
}

void ewctl_put_str(ew_buf *b, const char *key, const char *v)
{
    ew_buf_printf(b, ",\"%s\":", key);
    if (v)
        ew_json_write_string(b, v, strlen(v));
    else
        ew_buf_puts(b, "null");
}
