#!/usr/bin/python3
"""Interop with the RabbitMQ bus from another client: pika, the usual Python one.

    rabbitmq_interop.py consume URL EXCHANGE COUNT
        Binds a queue of its own to the topic exchange with "#", prints "ready", then reads
        COUNT messages, checks that each is a valid structured-mode CloudEvent of our catalog
        (and that the AMQP properties say so), and prints one JSON line per event:
        {"id", "type", "subject", "source", "data"}; then "ok COUNT".
    rabbitmq_interop.py publish URL EXCHANGE
        Publishes one user.registered CloudEvent, persistent and confirmed, the way a Python
        service of the system would, and prints it as one JSON line.
    rabbitmq_interop.py queues SERVERS_DIR EXCHANGE
        Lists the exchange's queues with rabbitmqctl (the test server's node), one JSON line each.

Exits 0 on success, 1 with a message on stderr when a check fails, 77 when pika is missing.
"""
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid

try:
    import pika
except ImportError:  # the C test skips
    print("pika is not installed (apt-get install python3-pika)", file=sys.stderr)
    sys.exit(77)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
TIMEOUT_S = 60


def fail(msg):
    print("rabbitmq_interop: " + msg, file=sys.stderr)
    sys.exit(1)


def check_cloudevent(body, props, routing_key):
    """The body as a dict, after checking it is a CloudEvent as docs/events.md describes."""
    try:
        ev = json.loads(body)
    except ValueError as e:
        fail("not JSON: %s: %r" % (e, body[:200]))
    if not isinstance(ev, dict):
        fail("not a JSON object: %r" % body[:200])
    if ev.get("specversion") != "1.0":
        fail("specversion is %r" % ev.get("specversion"))
    for attr in ("id", "source", "type", "subject", "time", "datacontenttype", "dataschema"):
        if not isinstance(ev.get(attr), str) or not ev[attr]:
            fail("attribute %s missing or empty in %r" % (attr, ev))
    if not UUID_RE.match(ev["id"]):
        fail("id %r is not a UUID" % ev["id"])
    if not TIME_RE.match(ev["time"]):
        fail("time %r is not RFC 3339" % ev["time"])
    datetime.datetime.fromisoformat(ev["time"].replace("Z", "+00:00"))
    if ev["datacontenttype"] != "application/json":
        fail("datacontenttype is %r" % ev["datacontenttype"])
    if ev["dataschema"] != "urn:eventwire:schema:%s:%d" % (ev["type"], ev.get("eventversion", 1)):
        fail("dataschema %r does not name type and version" % ev["dataschema"])
    if not isinstance(ev.get("data"), dict):
        fail("data is not an object")
    if routing_key != ev["type"]:
        fail("routing key %r differs from the type %r" % (routing_key, ev["type"]))
    if props.content_type != "application/cloudevents+json":
        fail("content_type property is %r" % props.content_type)
    if props.delivery_mode != 2:
        fail("delivery_mode is %r, not persistent" % props.delivery_mode)
    if props.message_id != ev["id"]:
        fail("message_id %r differs from the event id %r" % (props.message_id, ev["id"]))
    if ev["type"] == "user.registered":
        d = ev["data"]
        if not UUID_RE.match(d.get("user_id", "")) or "@" not in d.get("email", ""):
            fail("user.registered data is wrong: %r" % d)
        if not isinstance(d.get("roles"), list) or not isinstance(d.get("username"), str):
            fail("user.registered data is wrong: %r" % d)
    return ev


def consume(url, exchange, count):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="topic", durable=True, passive=True)
    q = ch.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(queue=q, exchange=exchange, routing_key="#")
    print("ready", flush=True)
    got = 0
    deadline = time.monotonic() + TIMEOUT_S
    for method, props, body in ch.consume(q, inactivity_timeout=1):
        if method is None:
            if time.monotonic() > deadline:
                fail("%d of %d events after %d s" % (got, count, TIMEOUT_S))
            continue
        ev = check_cloudevent(body, props, method.routing_key)
        ch.basic_ack(method.delivery_tag)
        print(json.dumps({k: ev[k] for k in ("id", "type", "subject", "source", "data")}),
              flush=True)
        got += 1
        if got == count:
            break
    ch.cancel()
    conn.close()
    print("ok %d" % got, flush=True)


def publish(url, exchange):
    user_id = str(uuid.uuid4())
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ev = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "python-service",
        "type": "user.registered",
        "subject": user_id,
        "time": now,
        "datacontenttype": "application/json",
        "dataschema": "urn:eventwire:schema:user.registered:2",
        "eventversion": 2,
        "data": {"user_id": user_id, "email": "grace@example.com", "username": "grace",
                 "roles": ["user", "admin"]},
    }
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()  # basic_publish raises when the broker nacks or returns it
    ch.basic_publish(exchange=exchange, routing_key=ev["type"], body=json.dumps(ev),
                     properties=pika.BasicProperties(
                         content_type="application/cloudevents+json", delivery_mode=2,
                         message_id=ev["id"]),
                     mandatory=True)
    conn.close()
    print(json.dumps(ev), flush=True)


def queues(servers_dir, exchange):
    """rabbitmqctl of the node that scripts/test-servers started for servers_dir."""
    d = os.path.abspath(servers_dir)
    base = "/tmp/ew-rabbitmq-" + hashlib.md5(d.encode()).hexdigest()[:12]
    with open(os.path.join(base, "env")) as f:
        env = [line.strip() for line in f if line.strip()]
    cmd = ["env"] + env + ["/usr/lib/rabbitmq/bin/rabbitmqctl", "-q", "list_queues",
                           "name", "durable", "arguments", "--formatter", "json"]
    if os.getuid() == 0:
        cmd = ["runuser", "-u", "rabbitmq", "--"] + cmd
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout
    for q in json.loads(out):
        if q["name"].startswith(exchange + "."):
            print(json.dumps(q), flush=True)


def main(argv):
    if len(argv) == 5 and argv[1] == "consume":
        consume(argv[2], argv[3], int(argv[4]))
    elif len(argv) == 4 and argv[1] == "publish":
        publish(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == "queues":
        queues(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
