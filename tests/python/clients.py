"""Client helpers shared by the tests: confluent-kafka (librdkafka) and kafka-python.

Consumers here assign partitions explicitly and never commit (group behaviour has its own
tests in test_groups_*.py). Every wait is bounded in time and every loop in count.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Optional

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ADMIN_TIMEOUT_S = 20.0


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- confluent-kafka ---------------------------------------------------------------------------

def producer_config(bootstrap: str, **overrides) -> dict:
    config = {
        "bootstrap.servers": bootstrap,
        "broker.address.family": "v4",
        "acks": "all",
        # Plain producers by default; test_idempotence.py covers enable.idempotence.
        "enable.idempotence": False,
        "linger.ms": 5,
        "message.timeout.ms": 30000,
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, **overrides) -> dict:
    config = {
        "bootstrap.servers": bootstrap,
        "broker.address.family": "v4",
        # confluent-kafka requires a group.id even for assign(); nothing is committed.
        "group.id": "runnel-black-box",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "check.crcs": True,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 100,
    }
    config.update(overrides)
    return config


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "broker.address.family": "v4"})


def create_topic(bootstrap: str, topic: str, partitions: int = 1, config: Optional[dict] = None) -> None:
    admin = admin_client(bootstrap)
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=ADMIN_TIMEOUT_S,
        request_timeout=ADMIN_TIMEOUT_S,
    )
    futures[topic].result(timeout=ADMIN_TIMEOUT_S)
    wait_for_partitions(bootstrap, topic, partitions)


def wait_for_partitions(bootstrap: str, topic: str, partitions: int, timeout_s: float = ADMIN_TIMEOUT_S) -> None:
    """Until Metadata lists `topic` with `partitions` partitions (does not auto-create)."""
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=5)
        found = metadata.topics.get(topic)
        seen = None if found is None else len(found.partitions)
        if seen == partitions and found.error is None:
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {topic} has {seen} partitions in Metadata after {timeout_s} s, wanted {partitions}")


@dataclass
class Delivery:
    """What the producer was told about each record: acknowledged offsets and failures."""

    acked: list = field(default_factory=list)  # (partition, offset, key, value)
    failed: list = field(default_factory=list)  # (KafkaError, key, value)

    def callback(self, err, msg) -> None:
        if err is None:
            self.acked.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
        else:
            self.failed.append((err, msg.key(), msg.value()))


def produce_or_wait(producer: Producer, topic: str, max_wait_s: float = 30.0, **kwargs) -> None:
    """produce(), polling while librdkafka's local queue is full (bounded)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            if time.monotonic() > deadline:
                raise
            producer.poll(0.05)


def flush_all(producer: Producer, timeout_s: float = 60.0) -> None:
    remaining = producer.flush(timeout_s)
    assert remaining == 0, f"{remaining} records still unacknowledged after {timeout_s} s flush"


@dataclass
class Record:
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: Optional[list]
    timestamp: int


def watermarks(bootstrap: str, topic: str, partition: int, timeout_s: float = 10.0) -> tuple[int, int]:
    """(log start offset, high watermark), fresh from the broker via ListOffsets."""
    consumer = Consumer(consumer_config(bootstrap))
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s, cached=False)
    finally:
        consumer.close()


def consume_partitions(
    bootstrap: str,
    topic: str,
    partitions: Iterable[int],
    timeout_s: float = 60.0,
    start_offset: int = OFFSET_BEGINNING,
    **config_overrides,
) -> dict[int, list[Record]]:
    """Everything from `start_offset` up to each partition's current high watermark.

    Fails on any consumer error (a CRC or decoding error included) and if the end is not
    reached within `timeout_s`.
    """
    partitions = list(partitions)
    consumer = Consumer(consumer_config(bootstrap, **config_overrides))
    try:
        ends = {}
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            ends[p] = high
        records: dict[int, list[Record]] = {p: [] for p in partitions}
        next_offset = {p: None for p in partitions}
        consumer.assign([TopicPartition(topic, p, start_offset) for p in partitions])

        def done(p):
            if ends[p] == 0:
                return True
            return next_offset[p] is not None and next_offset[p] >= ends[p]

        deadline = time.monotonic() + timeout_s
        while not all(done(p) for p in partitions):
            if time.monotonic() > deadline:
                progress = {p: (next_offset[p], ends[p]) for p in partitions}
                raise AssertionError(
                    f"consuming {topic}: end not reached within {timeout_s} s; "
                    f"(next offset, high watermark) per partition: {progress}"
                )
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(
                        f"consumer error on {topic} [{msg.partition()}] at offset {msg.offset()}: {err}"
                    )
                p = msg.partition()
                records[p].append(
                    Record(p, msg.offset(), msg.key(), msg.value(), msg.headers(), msg.timestamp()[1])
                )
                next_offset[p] = msg.offset() + 1
        return records
    finally:
        consumer.close()


# --- kafka-python ------------------------------------------------------------------------------

def kafka_python_consume(bootstrap: str, topic: str, partitions: Iterable[int], expected: int, timeout_s: float = 60.0):
    """Reads `expected` records (from the beginning) with kafka-python, no group."""
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        check_crcs=True,
        request_timeout_ms=30000,
    )
    try:
        tps = [KpTopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"kafka-python read {len(out)} of {expected} records from {topic} within {timeout_s} s")
            for _tp, batch in consumer.poll(timeout_ms=500).items():
                out.extend(batch)
        return out
    finally:
        consumer.close()


def wait_until(what: str, predicate, timeout_s: float = 60.0, interval_s: float = 0.2):
    """Polls `predicate` until it returns something truthy (returned), or fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        last = predicate()
        if last:
            return last
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what} (last: {last!r})"
        time.sleep(interval_s)
