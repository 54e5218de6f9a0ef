"""Reads Prometheus text exposition on stdin with the official client's parser
(python3-prometheus-client) and prints every sample as one canonical line,
    name{a="x",b="y"} value
labels sorted by name. Exits 1, saying why, when the text does not parse or breaks a rule the
exposition format states: a family without TYPE, a counter sample not ending in _total, a
histogram without its +Inf bucket, _sum and _count, or a family announced twice."""
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
announced = [l.split()[2] for l in text.splitlines() if l.startswith("# TYPE ")]
if len(announced) != len(set(announced)):
    sys.exit("a family is announced twice")
try:
    families = list(text_string_to_metric_families(text))
except Exception as e:  # the parser raises ValueError and friends
    sys.exit("does not parse: %s" % e)
for f in families:
    if f.type == "unknown":
        sys.exit("family %s has no TYPE" % f.name)
    names = {s.name for s in f.samples}
    if f.type == "counter":
        for n in names:
            if not n.endswith("_total"):
                sys.exit("counter sample %s does not end in _total" % n)
    if f.type == "histogram":
        series = {}
        for s in f.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault(key, set()).add(
                s.name + ("+Inf" if s.labels.get("le") == "+Inf" else ""))
        for key, got in series.items():
            want = {f.name + "_bucket+Inf", f.name + "_sum", f.name + "_count"}
            if not want <= got:
                sys.exit("histogram %s%s lacks %s" % (f.name, key, want - got))
    for s in f.samples:
        labels = ",".join('%s="%s"' % (k, s.labels[k]) for k in sorted(s.labels))
        print("%s{%s} %r" % (s.name, labels, float(s.value)))
