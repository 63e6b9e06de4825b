"""Segment roll by segment.bytes, and retention by bytes and by time moving the log start."""

import re
import time

from confluent_kafka import Producer

from clients import consume_partitions, create_topic, flush_all, produce_or_wait, producer_config, unique_topic, watermarks

SEGMENT_BYTES = 10_000
RECORDS = 400
VALUE_BYTES = 500  # ~200 KB in all
RETENTION_CHECK = {"log.retention.check.interval.ms": "200"}
RETENTION_WAIT_S = 20.0
SEGMENT_NAME = re.compile(r"^(\d{20})\.log$")


def small_batch_producer(bootstrap):
    # Batches of at most 10 records (~5 KB), so segments of 10 KB roll often.
    return Producer(producer_config(bootstrap, **{"linger.ms": 0, "batch.num.messages": 10, "compression.type": "none"}))


def value_for(i: int) -> bytes:
    head = f"record-{i:06d}:".encode()
    return head + b"." * (VALUE_BYTES - len(head))


def produce_records(bootstrap, topic, indexes, timestamp_ms=None):
    producer = small_batch_producer(bootstrap)
    for i in indexes:
        extra = {} if timestamp_ms is None else {"timestamp": timestamp_ms}
        produce_or_wait(producer, topic, key=f"k{i}".encode(), value=value_for(i), partition=0, **extra)
        if i % 10 == 9:
            producer.poll(0)
    flush_all(producer)


def segments(broker, topic):
    """[(base offset, size in bytes)] of the partition's live *.log segments, in offset order."""
    directory = broker.partition_dir(topic, 0)
    assert directory.is_dir(), f"no partition directory {directory}"
    found = []
    for path in directory.iterdir():
        m = SEGMENT_NAME.match(path.name)
        if m:
            found.append((int(m.group(1)), path.stat().st_size))
    return sorted(found)


def wait_for_log_start_above(broker, topic, minimum, timeout_s=RETENTION_WAIT_S):
    deadline = time.monotonic() + timeout_s
    low = high = None
    while time.monotonic() < deadline:
        low, high = watermarks(broker.bootstrap, topic, 0)
        if low > minimum:
            return low, high
        time.sleep(0.2)
    raise AssertionError(f"log start offset still {low} (high watermark {high}) after {timeout_s} s; wanted > {minimum}")


def assert_reads_tail(broker, topic, low, high):
    records = consume_partitions(broker.bootstrap, topic, [0])[0]
    assert [r.offset for r in records] == list(range(low, high)), (
        f"reading from the log start gave offsets {records[0].offset if records else None}..; wanted {low}..{high - 1}"
    )
    bad = [r.offset for r in records if r.value != value_for(r.offset)]
    assert not bad, f"records at offsets {bad[:5]} hold other values"
    # A consumer asking for an offset below the log start is reset to it (OFFSET_OUT_OF_RANGE → earliest).
    reset = consume_partitions(broker.bootstrap, topic, [0], start_offset=0)[0]
    assert reset and reset[0].offset == low, f"fetch from offset 0 after retention started at {reset[0].offset if reset else None}, wanted {low}"


def test_segments_roll_at_segment_bytes(broker):
    topic = unique_topic("roll")
    create_topic(broker.bootstrap, topic, 1, config={"segment.bytes": str(SEGMENT_BYTES)})
    produce_records(broker.bootstrap, topic, range(RECORDS))

    found = segments(broker, topic)
    assert len(found) >= 5, f"{len(found)} segments after ~200 KB with segment.bytes={SEGMENT_BYTES}: {found}"
    assert found[0][0] == 0, f"first segment base offset {found[0][0]}, wanted 0"
    bases = [base for base, _ in found]
    assert bases == sorted(set(bases)), f"segment base offsets not strictly increasing: {bases}"
    oversized = [(base, size) for base, size in found[:-1] if size > SEGMENT_BYTES]
    assert not oversized, f"closed segments larger than segment.bytes={SEGMENT_BYTES}: {oversized}"
    assert watermarks(broker.bootstrap, topic, 0) == (0, RECORDS)
    assert_reads_tail(broker, topic, 0, RECORDS)


def test_retention_bytes_deletes_oldest_segments(broker_factory):
    broker = broker_factory(sets=RETENTION_CHECK)
    topic = unique_topic("ret-bytes")
    retention_bytes = 30_000
    create_topic(broker.bootstrap, topic, 1, config={"segment.bytes": str(SEGMENT_BYTES), "retention.bytes": str(retention_bytes)})
    produce_records(broker.bootstrap, topic, range(RECORDS))

    low, high = wait_for_log_start_above(broker, topic, 0)
    assert high == RECORDS, f"high watermark {high} after retention, wanted {RECORDS}"
    # Deletion is whole segments, oldest first, while the rest still exceeds retention.bytes.
    deadline = time.monotonic() + RETENTION_WAIT_S
    while True:
        found = segments(broker, topic)
        total = sum(size for _, size in found)
        if total <= retention_bytes + SEGMENT_BYTES or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert total <= retention_bytes + SEGMENT_BYTES, f"{total} bytes in {len(found)} segments, retention.bytes={retention_bytes}"
    low, high = watermarks(broker.bootstrap, topic, 0)
    assert low == found[0][0], f"log start offset {low} is not the first remaining segment's base offset {found[0][0]}"
    assert_reads_tail(broker, topic, low, high)

    # The log start survives a restart: deleted records do not come back.
    broker.restart()
    after = watermarks(broker.bootstrap, topic, 0)
    assert after[0] >= low and after[1] == high, f"(log start, high watermark) {after} after restart, was {(low, high)}"


def test_retention_ms_deletes_expired_segments(broker_factory):
    broker = broker_factory(sets=RETENTION_CHECK)
    topic = unique_topic("ret-ms")
    create_topic(broker.bootstrap, topic, 1, config={"segment.bytes": str(SEGMENT_BYTES), "retention.ms": "600000"})
    old = 200
    # Records stamped an hour ago are past retention.ms=10 min as soon as they are written.
    produce_records(broker.bootstrap, topic, range(old), timestamp_ms=int(time.time() * 1000) - 3_600_000)
    produce_records(broker.bootstrap, topic, range(old, old + 40))

    low, high = wait_for_log_start_above(broker, topic, old // 2)
    # Only the segment holding both old and new records may keep old ones (≤ ~2 segments' worth).
    assert old - 40 <= low <= old, f"log start {low}: expired records 0..{old - 1} should be gone, current ones kept"
    assert high == old + 40
    assert_reads_tail(broker, topic, low, high)
