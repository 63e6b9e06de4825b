"""GET /metrics: Prometheus text with request counters per Kafka API."""

import re

from confluent_kafka import Producer

import kafka_wire as wire
from clients import consume_partitions, create_topic, flush_all, producer_config, unique_topic

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def normalize(api: str) -> str:
    return re.sub(r"[^a-z]", "", api.lower())


def request_counts(text: str) -> dict:
    """{normalized api name: count} from the per-API request counter."""
    counts = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m or not m.group("name").endswith("requests_total") or "error" in m.group("name"):
            continue
        labels = dict(LABEL.findall(m.group("labels") or ""))
        if "api" in labels:
            counts[normalize(labels["api"])] = float(m.group("value"))
    return counts


def test_request_counters_per_api(broker):
    topic = unique_topic("metrics")
    create_topic(broker.bootstrap, topic, 1)
    producer = Producer(producer_config(broker.bootstrap))
    for i in range(10):
        producer.produce(topic, value=b"m", partition=0)
        flush_all(producer)  # one Produce request each
    consume_partitions(broker.bootstrap, topic, [0])

    text = broker.metrics()
    counts = request_counts(text)
    assert counts, f"no per-API request counter (…requests_total{{api=\"…\"}}) in /metrics:\n{text[:2000]}"
    for api in ("apiversions", "metadata", "produce", "fetch", "listoffsets", "createtopics"):
        assert counts.get(api, 0) >= 1, f"no requests counted for {api}: {counts}"
    assert counts["produce"] >= 10, f"10 Produce requests sent, {counts['produce']} counted"

    # Exactly N more ApiVersions requests → the counter rises by at least N.
    before = counts["apiversions"]
    sock = wire.connect(broker.kafka_address)
    try:
        for i in range(25):
            sock.sendall(wire.api_versions_request(i, version=3))
            wire.read_response(sock)
    finally:
        sock.close()
    after = request_counts(broker.metrics())["apiversions"]
    assert after >= before + 25, f"ApiVersions counter went {before} → {after} after 25 requests"


def unlabelled(text: str, name: str):
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group("name") == name and not m.group("labels"):
            return float(m.group("value"))
    return None


def test_process_metrics_report_the_broker_process(broker):
    """The standard, unprefixed process_* metrics: what dashboards (and `runnel bench`) read."""
    before = broker.metrics()
    cpu_before = unlabelled(before, "process_cpu_seconds_total")
    assert cpu_before is not None, f"no process_cpu_seconds_total in /metrics:\n{before[:2000]}"
    resident = unlabelled(before, "process_resident_memory_bytes")
    assert resident is not None and resident > 1e6, f"resident memory {resident}"
    fds = unlabelled(before, "process_open_fds")
    assert fds is not None and fds >= 3, f"open fds {fds} (a broker holds at least its listeners)"

    topic = unique_topic("cpu")
    create_topic(broker.bootstrap, topic, 1)
    producer = Producer(producer_config(broker.bootstrap))
    for i in range(20000):
        producer.produce(topic, value=b"x" * 1000, partition=0)
        if i % 1000 == 0:
            producer.poll(0)
    flush_all(producer)
    cpu_after = unlabelled(broker.metrics(), "process_cpu_seconds_total")
    assert cpu_after > cpu_before, f"20 MB produced, broker CPU {cpu_before} → {cpu_after} s"
