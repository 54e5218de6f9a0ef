/* eventwire — upcasters: how the data of an old version of a type becomes the next version. */
#ifndef EW_CATALOG_UPCAST_H
#define EW_CATALOG_UPCAST_H

#include "core/arena.h"
#include "core/json.h"
#include "eventwire/catalog.h"

/* Rewrites data (an object valid for `from`) into the data of version from->version + 1, in
 * place, allocating new nodes from arena. EW_EVERSION when the catalog has no upcaster for it. */
int ew__upcast(const ew_type_info *from, ew_json *data, ew_arena *arena, ew_error *err);

#endif
