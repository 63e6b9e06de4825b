"""Every compression codec round-trips byte for byte, across both client libraries."""

import random

import pytest
from confluent_kafka import Producer

from clients import (
    Delivery,
    consume_partitions,
    create_topic,
    flush_all,
    kafka_python_consume,
    produce_or_wait,
    producer_config,
    unique_topic,
)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
RECORDS = 600


def payloads(seed: int):
    """Keyed values: compressible text, incompressible random bytes, empty, and up to 64 KiB."""
    rng = random.Random(seed)
    out = []
    for i in range(RECORDS):
        kind = i % 4
        if kind == 0:
            value = (f"record {i} " * rng.randint(1, 200)).encode()
        elif kind == 1:
            value = rng.randbytes(rng.randint(1, 2000))
        elif kind == 2:
            value = b""
        else:
            value = rng.randbytes(64) * rng.randint(1, 1024)
        out.append((f"k{i}".encode(), value))
    return out


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_produce_compressed_read_by_both_clients(broker, codec):
    topic = unique_topic(f"codec-{codec}")
    create_topic(broker.bootstrap, topic, partitions=2)
    sent = payloads(seed=len(codec))
    delivery = Delivery()
    producer = Producer(producer_config(broker.bootstrap, **{"compression.type": codec, "linger.ms": 20}))
    for i, (key, value) in enumerate(sent):
        produce_or_wait(producer, topic, key=key, value=value, partition=i % 2, on_delivery=delivery.callback)
    flush_all(producer)
    assert not delivery.failed, f"{codec}: delivery failed: {delivery.failed[:3]}"

    records = consume_partitions(broker.bootstrap, topic, [0, 1])
    got = {r.key: r.value for rs in records.values() for r in rs}
    assert len(got) == len(sent), f"{codec}: confluent read {len(got)} records of {len(sent)}"
    mismatched = [k for k, v in sent if got.get(k) != v]
    assert not mismatched, f"{codec}: confluent read different bytes for keys {mismatched[:5]}"

    kp = kafka_python_consume(broker.bootstrap, topic, [0, 1], expected=len(sent))
    got_kp = {r.key: r.value for r in kp}
    assert len(kp) == len(sent), f"{codec}: kafka-python read {len(kp)} records of {len(sent)}"
    mismatched = [k for k, v in sent if got_kp.get(k) != v]
    assert not mismatched, f"{codec}: kafka-python read different bytes for keys {mismatched[:5]}"


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_produce_compressed_read_by_confluent(broker, codec):
    from kafka import KafkaProducer

    topic = unique_topic(f"kp-codec-{codec}")
    create_topic(broker.bootstrap, topic, partitions=1)
    sent = payloads(seed=100 + len(codec))
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        compression_type=None if codec == "none" else codec,
        linger_ms=20,
        enable_idempotence=False,  # no InitProducerId in the broker yet
        max_request_size=4 * 1024 * 1024,
    )
    try:
        futures = [producer.send(topic, key=k, value=v, partition=0) for k, v in sent]
        producer.flush(timeout=60)
        offsets = [f.get(timeout=30).offset for f in futures]
    finally:
        producer.close(timeout=10)
    assert offsets == list(range(len(sent))), f"{codec}: kafka-python acknowledged offsets {offsets[:10]}..."

    records = consume_partitions(broker.bootstrap, topic, [0])[0]
    assert [(r.key, r.value) for r in records] == sent, f"{codec}: confluent read back different records"
