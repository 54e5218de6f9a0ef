#!/usr/bin/python3
"""Interop of the Kafka bus with a Python service (confluent-kafka, Debian's python3-confluent-kafka).

  kafka_interop.py consume BOOTSTRAP PREFIX EXPECTED_FILE
      Reads the topics PREFIX.TYPE of the events listed in EXPECTED_FILE (one CloudEvents JSON
      per line, as eventwire encoded them) and checks that each event arrived once, as a valid
      CloudEvent in structured mode: content-type header, key = subject, every required
      attribute, the right type, subject, source and data. Prints "checked N events".

  kafka_interop.py produce BOOTSTRAP TOPIC MODE ID SUBJECT
      Publishes one user.registered event the way a Python service of the system would:
      MODE "structured" (the value is the CloudEvent, content-type application/cloudevents+json)
      or "binary" (ce_* headers, the value is the data). Prints "produced ID".

Exit status 0 when everything checked out; 1 with the reason on stderr otherwise.
"""
import json
import re
import sys
import time
import uuid
from datetime import datetime, timezone

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka import OFFSET_BEGINNING

TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
TIMEOUT_S = 60


def fail(msg):
    print("kafka_interop: " + msg, file=sys.stderr)
    sys.exit(1)


def check_cloudevent(ev, where):
    """The CloudEvents 1.0 rules a consumer of another language relies on."""
    if not isinstance(ev, dict):
        fail(f"{where}: not a JSON object")
    if ev.get("specversion") != "1.0":
        fail(f"{where}: specversion is {ev.get('specversion')!r}")
    for attr in ("id", "source", "type"):
        if not isinstance(ev.get(attr), str) or not ev[attr]:
            fail(f"{where}: required attribute {attr} missing or empty")
    for name in ev:
        if name not in ("data", "data_base64") and not re.fullmatch(r"[a-z0-9]{1,20}", name):
            fail(f"{where}: attribute name {name!r} is not a valid CloudEvents name")
    if "time" in ev and not TIME_RE.match(ev["time"]):
        fail(f"{where}: time {ev['time']!r} is not RFC 3339")
    if ev.get("datacontenttype", "application/json").split(";")[0] != "application/json":
        fail(f"{where}: datacontenttype {ev.get('datacontenttype')!r}")
    if not isinstance(ev.get("data"), dict):
        fail(f"{where}: data is not a JSON object")


def consume(bootstrap, prefix, expected_file):
    with open(expected_file, encoding="utf-8") as f:
        expected = {e["id"]: e for e in (json.loads(line) for line in f if line.strip())}
    topics = sorted({f"{prefix}.{e['type']}" for e in expected.values()})
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"interop-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "log_level": 0,
    })
    md = c.list_topics(timeout=30)
    parts = []
    for t in topics:
        if t not in md.topics or md.topics[t].error:
            fail(f"topic {t} does not exist")
        parts += [TopicPartition(t, p, OFFSET_BEGINNING) for p in md.topics[t].partitions]
    c.assign(parts)
    seen = {}
    deadline = time.time() + TIMEOUT_S
    while len(seen) < len(expected) and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() != KafkaError._PARTITION_EOF:
                fail(f"consume: {m.error()}")
            continue
        where = f"{m.topic()}[{m.partition()}]@{m.offset()}"
        headers = dict(m.headers() or [])
        ct = headers.get("content-type", b"").decode()
        if not ct.startswith("application/cloudevents+json"):
            fail(f"{where}: content-type header is {ct!r}, not structured mode")
        try:
            ev = json.loads(m.value())
        except ValueError as e:
            fail(f"{where}: value is not JSON: {e}")
        check_cloudevent(ev, where)
        want = expected.get(ev["id"])
        if want is None:
            fail(f"{where}: unexpected event {ev['id']}")
        if ev["id"] in seen:
            fail(f"{where}: event {ev['id']} twice")
        if m.topic() != f"{prefix}.{ev['type']}":
            fail(f"{where}: a {ev['type']} event in topic {m.topic()}")
        for attr in ("type", "subject", "source", "time", "correlationid", "dataschema"):
            if ev.get(attr) != want.get(attr):
                fail(f"{where}: {attr} is {ev.get(attr)!r}, published {want.get(attr)!r}")
        if ev["data"] != want["data"]:
            fail(f"{where}: data is {ev['data']!r}, published {want['data']!r}")
        if (m.key() or b"").decode() != ev.get("subject", ""):
            fail(f"{where}: key {m.key()!r} is not the subject {ev.get('subject')!r}")
        seen[ev["id"]] = True
    c.close()
    if len(seen) != len(expected):
        fail(f"{len(seen)} of {len(expected)} events arrived within {TIMEOUT_S} s")
    print(f"checked {len(seen)} events")


def produce(bootstrap, topic, mode, event_id, subject):
    data = {"user_id": subject, "email": "py@example.com", "username": "python",
            "roles": ["user", "admin"]}
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    attrs = {
        "specversion": "1.0",
        "id": event_id,
        "source": "python-service",
        "type": "user.registered",
        "subject": subject,
        "time": now,
        "datacontenttype": "application/json",
        "dataschema": "urn:eventwire:schema:user.registered:2",
        "eventversion": "2",
        "correlationid": event_id,
    }
    errors = []

    def report(err, msg):
        if err is not None:
            errors.append(str(err))

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "log_level": 0})
    if mode == "structured":
        value = json.dumps({**attrs, "data": data}).encode()
        headers = [("content-type", b"application/cloudevents+json; charset=UTF-8")]
    elif mode == "binary":
        value = json.dumps(data).encode()
        headers = [("ce_" + k, v.encode()) for k, v in attrs.items() if k != "datacontenttype"]
        headers.append(("content-type", b"application/json"))
    else:
        fail(f"unknown mode {mode}")
    p.produce(topic, value=value, key=subject.encode(), headers=headers, on_delivery=report)
    if p.flush(TIMEOUT_S) != 0:
        fail("produce: not delivered in time")
    if errors:
        fail("produce: " + errors[0])
    print(f"produced {event_id}")


def main(argv):
    if len(argv) == 5 and argv[1] == "consume":
        consume(argv[2], argv[3], argv[4])
    elif len(argv) == 7 and argv[1] == "produce":
        produce(argv[2], argv[3], argv[4], argv[5], argv[6])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
