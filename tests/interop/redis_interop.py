#!/usr/bin/python3
"""Interop with the Redis bus (streams) from another client: redis-py, the usual Python one.

    redis_interop.py consume URL STREAM GROUP COUNT
        Creates consumer group GROUP on STREAM from its first entry (XGROUP CREATE ... 0
        MKSTREAM), reads COUNT entries with XREADGROUP, checks that each holds a valid
        structured-mode CloudEvent of our catalog in its field `event`, of the stream's type
        (STREAM is PREFIX:TYPE), acknowledges it with XACK, and prints one JSON line per event:
        {"id", "type", "subject", "source", "data"}; then "ok COUNT".
    redis_interop.py publish URL STREAM
        Appends one user.registered CloudEvent to STREAM with XADD, the way a Python service of
        the system would, and prints it as one JSON line.

Exits 0 on success, 1 with a message on stderr when a check fails, 77 when redis-py is missing.
"""
import datetime
import json
import os
import re
import sys
import time
import uuid

try:
    import redis
except ImportError:  # the C test skips
    print("redis-py is not installed (apt-get install python3-redis)", file=sys.stderr)
    sys.exit(77)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
TIMEOUT_S = 60


def fail(msg):
    print("redis_interop: " + msg, file=sys.stderr)
    sys.exit(1)


def check_cloudevent(fields, stream):
    """The entry's event as a dict, after checking it is a CloudEvent as docs/events.md and
    docs/bus-redis.md describe."""
    if b"event" not in fields:
        fail("entry without an 'event' field: %r" % list(fields))
    body = fields[b"event"]
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
    if stream.rsplit(":", 1)[-1] != ev["type"]:
        fail("stream %r does not carry events of type %r" % (stream, ev["type"]))
    if ev["type"] == "user.registered":
        d = ev["data"]
        if not UUID_RE.match(d.get("user_id", "")) or "@" not in d.get("email", ""):
            fail("user.registered data is wrong: %r" % d)
        if not isinstance(d.get("roles"), list) or not isinstance(d.get("username"), str):
            fail("user.registered data is wrong: %r" % d)
    return ev


def consume(url, stream, group, count):
    r = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S)
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    got = 0
    deadline = time.monotonic() + TIMEOUT_S
    while got < count:
        if time.monotonic() > deadline:
            fail("%d of %d events after %d s" % (got, count, TIMEOUT_S))
        reply = r.xreadgroup(group, "python-%d" % os.getpid(), {stream: ">"},
                             count=count - got, block=1000)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                ev = check_cloudevent(fields, stream)
                r.xack(stream, group, entry_id)
                print(json.dumps({k: ev[k] for k in ("id", "type", "subject", "source", "data")}),
                      flush=True)
                got += 1
    pending = r.xpending(stream, group)["pending"]
    if pending:
        fail("%d entries still pending after XACK" % pending)
    print("ok %d" % got, flush=True)


def publish(url, stream):
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
    r = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S)
    r.xadd(stream, {"event": json.dumps(ev)}, maxlen=1000000, approximate=True)
    print(json.dumps(ev), flush=True)


def main(argv):
    if len(argv) == 6 and argv[1] == "consume":
        consume(argv[2], argv[3], argv[4], int(argv[5]))
    elif len(argv) == 4 and argv[1] == "publish":
        publish(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
