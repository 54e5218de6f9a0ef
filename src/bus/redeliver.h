/* eventwire — redeliveries: an event handed back to one subscriber group, across processes.
 *
 * `ewctl dlq retry` and `ewctl store replay` run in a process of their own, while the handlers
 * they address run in the services. They reach them through the bus itself: they publish an
 * eventwire.redelivery event (catalog.h: group, handler, dead letter id, the event) and every
 * group's consumer receives it — bus.c subscribes each group to that type on the backend when
 * the group is first subscribed — so no backend needs anything of its own. The dispatcher
 * recognises the type before routing and hands the event inside to the named group (and
 * handler) only; every other group acknowledges and drops it. When a retried dead letter is
 * handled, the dead letter sink hears of it (ew_dlq_sink_ops.resolved). */
#ifndef EW_BUS_REDELIVER_H
#define EW_BUS_REDELIVER_H

#include <stdint.h>
#include "bus/backend.h"

#define EW_REDELIVERY_TYPE "eventwire.redelivery"

struct ew__keyring;

/* Builds the eventwire.redelivery event that hands ev to group (and only its handler `handler`
 * when not NULL), from source, keeping ev's subject and correlation id. dead_letter_id > 0 names
 * the dead letter being retried. The event inside is encrypted with keys (NULL: as it is), like
 * every event that leaves the process. *out holds one reference. */
int ew__redelivery_new(ew_event **out, struct ew__keyring *keys, const char *source,
                       const char *group, const char *handler, int64_t dead_letter_id,
                       const ew_event *ev, ew_error *err);

/* The dispatcher's side: dl carries an eventwire.redelivery event. Delivers the event inside to
 * its group when this dispatcher has that group and dl is for it (dl->group NULL or the same);
 * otherwise only acknowledges dl. An event inside that does not decode, or a handler this process
 * does not have, goes to the dead letter sink with the reason, and dl is acknowledged. Returns an
 * error (and dl->done is not called) only when nothing could be done and the backend should
 * leave dl for a later delivery: out of memory, or the sink refusing a dead letter. */
int ew__redelivery_deliver(ew_dispatcher *d, ew_delivery *dl, ew_error *err);

#endif
