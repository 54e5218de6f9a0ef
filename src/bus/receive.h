/* eventwire — the receive path: one function that every backend calls for every message it
 * receives, so that the same message is treated the same way on every broker.
 *
 *   bytes + transport metadata ──► decode (binding.c: ew__binding_decode)
 *                                   │ fails: dead letter, once ─────────────┐
 *                                   ▼                                       │
 *                                 verify  (EW__RECV_HOOK_VERIFY)            │
 *                                   ▼                                       │
 *                                 decrypt (EW__RECV_HOOK_DECRYPT)           │
 *                                   ▼                                       ▼
 *                                 count   (EW__RECV_HOOK_COUNT) ◄──── counted too
 *                                   ▼
 *                                 the event, for ew__dispatch_deliver()
 *
 * The one policy: a message that cannot be decoded, is larger than EVENT_MAX_BYTES, or is not a
 * valid event (an unknown type, data its schema refuses) is put into the bus's dead letter sink
 * once — with its raw bytes, where it came from (ew_dead_letter.transport) and the reason, under
 * the handler name "<decode>" — and then the backend settles it on the broker (XACK, offset
 * commit, basic.ack, the group's position). It is never left pending, never retried forever,
 * never dropped silently. Only when the sink itself refuses is the message kept: ew__receive()
 * tries the sink again with back-off until it takes the dead letter or the backend stops, and
 * the backend acknowledges nothing until then.
 *
 * The memory bus passes event objects, not bytes: it calls ew__recv_accept(), the same verify,
 * decrypt and count points without the decoding. */
#ifndef EW_BUS_RECEIVE_H
#define EW_BUS_RECEIVE_H

#include <stdbool.h>
#include <stddef.h>
#include "bus/binding.h"
#include "eventwire/bus.h"

/* One received message. Everything is borrowed for the call. */
typedef struct ew__recv_msg {
    ew__wire_msg wire;     /* the message as received: body, content type, headers */
    const char *group;     /* the subscriber group that received it */
    const char *type_hint; /* the type its place names (topic, stream, routing key); may be NULL */
    const char *id_hint;   /* an id the transport knows (AMQP message-id, a log row's event_id) */
    /* Where it came from, in the transport's words: "kafka topic=T partition=P offset=O",
     * "redis stream=S entry=ID", "rabbitmq queue=Q delivery-tag=N exchange=E routing-key=K",
     * "sqlite position=N". Goes into ew_dead_letter.transport. */
    const char *transport;
    /* A transport that decodes as it reads (the SQLite bus: the store's scan decodes the row)
     * sets predecoded and gives the result here instead of having wire decoded again: event, or
     * NULL with error (an EW_E… code) and error_msg. wire.body still holds the raw bytes. */
    bool predecoded;
    const ew_event *event;
    int error;
    const char *error_msg;
} ew__recv_msg;

typedef enum ew__recv_result {
    EW__RECV_EVENT = 0, /* *out holds the event (one reference): hand it to the dispatcher */
    EW__RECV_DEAD,      /* dead-lettered: acknowledge the message now */
    EW__RECV_STOPPED    /* the sink refused until stop() said so: do not acknowledge it */
} ew__recv_result;

/* Asked between attempts while the dead letter sink refuses: true ends the wait (the backend is
 * stopping). Called on the receiving thread. */
typedef bool (*ew__recv_stop_fn)(void *ud);

/* Receives m for bus: decode (max_bytes bounds the message, 0: no limit), verify, decrypt,
 * count, or dead letter under the one policy. stop may be NULL (then the sink is tried until it
 * takes the dead letter). Called on a backend's consumer thread; thread-safe. */
ew__recv_result ew__receive(ew_bus *bus, const ew__recv_msg *m, size_t max_bytes,
                            ew__recv_stop_fn stop, void *stop_ud, ew_event **out);

/* The points every received event passes once it is an event, whether it was decoded here or
 * handed over as an object (the memory bus). ev is borrowed. 0 to go on: then *replaced is NULL,
 * or a new event (a decrypted copy) that the caller owns one reference to and delivers instead
 * of ev. Otherwise err says why the event is refused, and the caller dead-letters it
 * (ew__recv_refused). Thread-safe. */
int ew__recv_accept(ew_bus *bus, const ew_event *ev, ew_event **replaced, ew_error *err);

/* The verify point alone (EW__RECV_HOOK_VERIFY), for an event that reaches the dispatcher
 * inside a redelivery. 0, or EW_EAUTH / EW_EPERM with the reason. Thread-safe. */
int ew__recv_verify(ew_bus *bus, const ew_event *ev, ew_error *err);

/* The decrypt point alone (EW__RECV_HOOK_DECRYPT), for the same event after ew__recv_verify():
 * *replaced as for ew__recv_accept(). 0, or EW_ECRYPTO / EW_EDATA with the reason. */
int ew__recv_decrypt(ew_bus *bus, const ew_event *ev, ew_event **replaced, ew_error *err);

/* Dead-letters an event that ew__recv_accept() refused, as ew__receive() does (same policy,
 * same retries). True when the sink has it. */
bool ew__recv_refused(ew_bus *bus, const ew_event *ev, const char *group, const char *transport,
                      int code, const char *why, ew__recv_stop_fn stop, void *stop_ud);

#endif
