"""Log compaction (cleanup.policy=compact) seen by confluent-kafka: the cleaner keeps the
latest value of every key, tombstones stay readable until delete.retention.ms and then go,
and `__consumer_offsets` is compacted without losing committed offsets across a restart."""

import os
import re
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from clients import (
    admin_client,
    consume_partitions,
    consumer_config,
    create_topic,
    flush_all,
    kafka_python_consume,
    produce_or_wait,
    producer_config,
    unique_topic,
)

UPDATES = 1_000_000
KEYS = 10_000
SEGMENT_BYTES = 256 * 1024
CLEANER = {"log.cleaner.backoff.ms": "200"}
CLEAN_WAIT_S = 60.0
SEGMENT_NAME = re.compile(r"^(\d{20})\.log$")
METRIC = re.compile(r"^(runnel_cleaner_\w+?)(?:_total)?\s+(\S+)$", re.M)


def cleaner_metrics(broker) -> dict:
    return {name: float(value) for name, value in METRIC.findall(broker.metrics())}


def active_segment_base(broker, topic) -> int:
    bases = [int(m.group(1)) for p in broker.partition_dir(topic, 0).iterdir() if (m := SEGMENT_NAME.match(p.name))]
    return max(bases)


def cleaned_up_to(broker, topic) -> int:
    """The cleaner's checkpoint: every offset below it has been cleaned (0 before any pass)."""
    path = broker.partition_dir(topic, 0) / "cleaner-offset-checkpoint"
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def wait_until_cleaned(broker, topic, timeout_s=CLEAN_WAIT_S) -> int:
    """Waits until every sealed segment has been cleaned; returns the clean offset."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, active = cleaned_up_to(broker, topic), active_segment_base(broker, topic)
        if active > 0 and done >= active:
            return done
        time.sleep(0.2)
    raise AssertionError(
        f"cleaner reached offset {cleaned_up_to(broker, topic)}, active segment starts at "
        f"{active_segment_base(broker, topic)}, after {timeout_s} s; metrics {cleaner_metrics(broker)}"
    )


def compacted_topic(broker, **config) -> str:
    topic = unique_topic("compact")
    settings = {"cleanup.policy": "compact", "segment.bytes": str(SEGMENT_BYTES)}
    settings.update(config)
    create_topic(broker.bootstrap, topic, 1, config=settings)
    return topic


def fast_producer(bootstrap) -> Producer:
    return Producer(
        producer_config(
            bootstrap,
            **{
                "acks": "1",
                "linger.ms": 20,
                "batch.num.messages": 10_000,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 500_000,
            },
        )
    )


def test_a_million_updates_over_ten_thousand_keys_compact_to_the_latest_values(broker_factory):
    broker = broker_factory(sets=CLEANER)
    topic = compacted_topic(broker)
    producer = fast_producer(broker.bootstrap)
    started = time.monotonic()
    latest = {}
    for i in range(UPDATES):
        key = f"key-{i % KEYS:05d}".encode()
        value = f"value-{i}".encode()
        produce_or_wait(producer, topic, key=key, value=value, partition=0)
        latest[key] = value
        if i % 10_000 == 0:
            producer.poll(0)
    flush_all(producer)
    produced_s = time.monotonic() - started

    clean_offset = wait_until_cleaned(broker, topic)
    records = consume_partitions(broker.bootstrap, topic, [0], timeout_s=60)[0]
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets)), "offsets strictly increase"
    assert offsets[-1] == UPDATES - 1, "the latest record is never compacted away"
    last = {}
    for r in records:
        last[r.key] = r.value
    assert last == latest, "every key's last value is the latest produced"
    cleaned_keys = [r.key for r in records if r.offset < clean_offset]
    assert len(cleaned_keys) == len(set(cleaned_keys)), "no key twice in the cleaned region"
    assert len(records) < UPDATES // 10, f"{len(records)} records left of {UPDATES}"
    # kafka-python (its own decoder) reads the compacted log the same way: gaps, batches whose
    # first or last records are gone, recompressed lz4.
    python_records = kafka_python_consume(broker.bootstrap, topic, [0], expected=len(records))
    assert [(r.offset, r.key, r.value) for r in python_records] == [(r.offset, r.key, r.value) for r in records]
    metrics = cleaner_metrics(broker)
    assert metrics["runnel_cleaner_passes"] >= 1
    assert metrics["runnel_cleaner_records_removed"] >= UPDATES - len(records) - KEYS, metrics
    assert metrics["runnel_cleaner_written_bytes"] > 0
    print(f"produced {UPDATES} in {produced_s:.1f} s; {len(records)} records left; cleaner {metrics}")


def test_two_cleaner_threads_clean_two_partitions(broker_factory):
    broker = broker_factory(sets={**CLEANER, "log.cleaner.threads": "2"})
    topics = [compacted_topic(broker, **{"segment.bytes": "65536"}) for _ in range(2)]
    producer = fast_producer(broker.bootstrap)
    latest = {topic: {} for topic in topics}
    for i in range(100_000):
        topic = topics[i % 2]
        key, value = f"k{i % 700}".encode(), f"{topic}-{i}".encode()
        produce_or_wait(producer, topic, key=key, value=value, partition=0)
        latest[topic][key] = value
    flush_all(producer)
    for topic in topics:
        clean_offset = wait_until_cleaned(broker, topic)
        records = consume_partitions(broker.bootstrap, topic, [0])[0]
        assert {r.key: r.value for r in records} == latest[topic]
        cleaned = [r.key for r in records if r.offset < clean_offset]
        assert len(cleaned) == len(set(cleaned)), f"{topic}: no key twice in the cleaned region"
        assert len(records) < 50_000 // 2


def test_tombstones_are_readable_until_delete_retention_then_gone(broker_factory):
    broker = broker_factory(sets=CLEANER)
    retention_ms = 3000
    topic = compacted_topic(broker, **{"segment.bytes": "16384", "delete.retention.ms": str(retention_ms)})
    producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 5, "compression.type": "zstd"}))
    for i in range(100):
        produce_or_wait(producer, topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=0)
    flush_all(producer)
    for i in range(50):
        produce_or_wait(producer, topic, key=f"k{i}".encode(), value=None, partition=0)
    flush_all(producer)
    # Filler under other keys (incompressible) rolls the segment, so the tombstones become cleanable.
    for i in range(300):
        produce_or_wait(producer, topic, key=f"filler{i}".encode(), value=os.urandom(200), partition=0)
    flush_all(producer)

    wait_until_cleaned(broker, topic)
    records = consume_partitions(broker.bootstrap, topic, [0])[0]
    by_key = {}
    for r in records:
        by_key.setdefault(r.key, []).append(r.value)
    for i in range(50):
        assert by_key[f"k{i}".encode()] == [None], f"k{i}: only its tombstone is left before the horizon"
    for i in range(50, 100):
        assert by_key[f"k{i}".encode()] == [f"v{i}".encode()]

    deadline = time.monotonic() + retention_ms / 1000 + 20
    while True:
        records = consume_partitions(broker.bootstrap, topic, [0])[0]
        keys = {r.key for r in records}
        if not any(f"k{i}".encode() in keys for i in range(50)):
            break
        assert time.monotonic() < deadline, f"tombstones still there; metrics {cleaner_metrics(broker)}"
        time.sleep(0.5)
    assert all(f"k{i}".encode() in keys for i in range(50, 100)), "live keys stay"
    assert cleaner_metrics(broker)["runnel_cleaner_tombstones_removed"] >= 50


def test_committed_offsets_survive_a_restart_with_consumer_offsets_compacted(broker_factory):
    broker = broker_factory(sets=CLEANER)
    topic = unique_topic("offsets")
    create_topic(broker.bootstrap, topic, 1)
    producer = Producer(producer_config(broker.bootstrap))
    for i in range(100):
        produce_or_wait(producer, topic, value=f"m{i}".encode(), partition=0)
    flush_all(producer)

    group = unique_topic("group")
    consumer = Consumer(consumer_config(broker.bootstrap, **{"group.id": group, "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    consumer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    admin = admin_client(broker.bootstrap)
    resource = ConfigResource(ConfigResource.Type.TOPIC, "__consumer_offsets")
    described = admin.describe_configs([resource])[resource].result(timeout=10)
    assert described["cleanup.policy"].value == "compact"
    # Small segments so that the commits below fill several and the cleaner has work.
    small = ConfigResource(
        ConfigResource.Type.TOPIC,
        "__consumer_offsets",
        incremental_configs=[ConfigEntry("segment.bytes", "4096", incremental_operation=AlterConfigOpType.SET)],
    )
    admin.incremental_alter_configs([small])[small].result(timeout=10)
    for offset in range(2, 801):
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    consumer.close()
    # A deleted group leaves a tombstone for each of its offsets (and for its metadata record,
    # when it had one: this group never joined, so it has none).
    doomed = unique_topic("doomed")
    other = Consumer(consumer_config(broker.bootstrap, **{"group.id": doomed, "enable.auto.commit": False}))
    other.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
    other.close()
    admin.delete_consumer_groups([doomed])[doomed].result(timeout=10)
    offsets_log = consume_partitions(broker.bootstrap, "__consumer_offsets", [0])[0]
    tombstoned = [r.key for r in offsets_log if r.value is None and doomed.encode() in r.key]
    assert len(tombstoned) == 1, f"the offset key of {doomed} gets a tombstone: {tombstoned}"

    wait_until_cleaned(broker, "__consumer_offsets")
    metrics = cleaner_metrics(broker)
    assert metrics["runnel_cleaner_records_removed"] >= 500, metrics
    broker.restart()
    listed = admin_client(broker.bootstrap).list_consumer_groups().result(timeout=10)
    assert doomed not in {g.group_id for g in listed.valid}, "a deleted group stays deleted"

    consumer = Consumer(consumer_config(broker.bootstrap, **{"group.id": group, "enable.auto.commit": False}))
    try:
        committed = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        assert committed[0].offset == 800, f"committed offset after restart: {committed[0].offset}"
    finally:
        consumer.close()
