"""Crashes: SIGKILL under load, and torn segment tails found on restart.

SIGKILL under load: every acknowledged (acks=all) record survives, in order, exactly once.

The producer never retries (retries=0), so a record is sent at most once: any duplicate in the
log is the broker's doing. Kill points come from a seeded RNG (RUNNEL_TEST_SEED) and the seed is
in every assertion message, so a failure can be replayed.
"""

import os
import pathlib
import random
import time

import pytest
from confluent_kafka import Producer

import kafka_wire as wire
from clients import Delivery, consume_partitions, create_topic, flush_all, producer_config, unique_topic, watermarks

KILL_POINTS = 8
PARTITIONS = 3
KILL_AFTER_S = (0.05, 0.5)
# Each produce burst is bounded in records as well as in time.
RECORDS_PER_ROUND_MAX = 200_000
FLUSH_AFTER_RESTART_S = 20
SEGMENT_BYTES = 1_000_000


def seed() -> int:
    return int(os.environ.get("RUNNEL_TEST_SEED", "1234567"))


class Acks:
    def __init__(self):
        self.acked = {}  # (partition, seq) -> offset
        self.failed = 0

    def callback(self, err, msg):
        if err is not None:
            self.failed += 1
            return
        _round, partition, seq = parse(msg.value())
        assert partition == msg.partition(), f"record for partition {partition} acknowledged on {msg.partition()}"
        self.acked[(partition, seq)] = msg.offset()


def parse(value: bytes):
    round_, partition, seq, _pad = value.decode().split(":")
    return int(round_), int(partition), int(seq)


@pytest.mark.slow
def test_acknowledged_records_survive_sigkill(broker):
    rng = random.Random(seed())
    topic = unique_topic("crash")
    # Small segments, so kills also land during segment rolls and recovery spans many segments.
    create_topic(broker.bootstrap, topic, PARTITIONS, config={"segment.bytes": str(SEGMENT_BYTES)})
    acks = Acks()
    next_seq = [0] * PARTITIONS
    sent = 0

    for round_ in range(KILL_POINTS):
        context = f"seed {seed()} round {round_}"
        producer = Producer(producer_config(broker.bootstrap, **{
            "acks": "all",
            "retries": 0,  # at most once per record: duplicates can only come from the broker
            "linger.ms": rng.choice([0, 1, 5, 20]),
            "batch.num.messages": rng.choice([1, 50, 1000]),
            "compression.type": rng.choice(["none", "lz4", "zstd"]),
            "message.timeout.ms": 10_000,
            "queue.buffering.max.messages": 50_000,
            "reconnect.backoff.ms": 20,
            "reconnect.backoff.max.ms": 200,
        }))
        kill_after_s = rng.uniform(*KILL_AFTER_S)
        padding = "x" * rng.choice([10, 200, 2000])
        started = time.monotonic()
        produced_this_round = 0
        while time.monotonic() - started < kill_after_s and produced_this_round < RECORDS_PER_ROUND_MAX:
            p = produced_this_round % PARTITIONS
            value = f"{round_}:{p}:{next_seq[p]}:{padding}".encode()
            try:
                producer.produce(topic, value=value, partition=p, on_delivery=acks.callback)
            except BufferError:
                producer.poll(0.01)
                continue
            next_seq[p] += 1
            produced_this_round += 1
            if produced_this_round % 500 == 0:
                producer.poll(0)
        broker.kill()
        producer.poll(0.05)
        time.sleep(rng.uniform(0.0, 0.3))
        broker.start()
        # Records still queued go to the restarted broker; those in flight at the kill fail.
        remaining = producer.flush(FLUSH_AFTER_RESTART_S)
        assert remaining == 0, f"{context}: {remaining} records neither acknowledged nor failed"
        sent += produced_this_round

    assert acks.acked, f"seed {seed()}: no record was acknowledged in {KILL_POINTS} rounds: the test tested nothing"
    broker.kill()
    broker.start()

    records = consume_partitions(broker.bootstrap, topic, range(PARTITIONS), timeout_s=120)
    found = {}
    for p, rs in records.items():
        offsets = [r.offset for r in rs]
        assert offsets == list(range(len(rs))), f"seed {seed()}: partition {p} offsets have holes or repeats: first bad near {first_gap(offsets)}"
        seqs = []
        for r in rs:
            _round, partition, seq = parse(r.value)
            assert partition == p, f"seed {seed()}: record for partition {partition} found in partition {p} at offset {r.offset}"
            seqs.append(seq)
            found[(p, seq)] = r.offset
        duplicates = len(seqs) - len(set(seqs))
        assert duplicates == 0, f"seed {seed()}: partition {p} has {duplicates} duplicated records (the producer never retried)"
        assert seqs == sorted(seqs), f"seed {seed()}: partition {p} records out of produce order near offset {first_unsorted(seqs)}"

    lost = sorted(key for key in acks.acked if key not in found)
    assert not lost, f"seed {seed()}: {len(lost)} acknowledged records lost after SIGKILL, e.g. (partition, seq) {lost[:10]}"
    moved = [(key, offset, found[key]) for key, offset in acks.acked.items() if found[key] != offset]
    assert not moved, f"seed {seed()}: {len(moved)} acknowledged records at other offsets than acknowledged, e.g. {moved[:5]}"
    # Fetching from inside the recovered log (offset index rebuilt or trusted) starts right there.
    for p, rs in records.items():
        if not rs:
            continue
        middle = rng.randrange(len(rs))
        tail = consume_partitions(broker.bootstrap, topic, [p], timeout_s=60, start_offset=middle)[p]
        assert tail and tail[0].offset == middle and tail[0].value == rs[middle].value, (
            f"seed {seed()}: fetch from offset {middle} of partition {p} after recovery started at "
            f"{tail[0].offset if tail else None}"
        )
    print(f"seed {seed()}: {sent} sent, {len(acks.acked)} acknowledged, {acks.failed} failed, "
          f"{sum(len(rs) for rs in records.values())} in the log after {KILL_POINTS} kills")


def first_gap(offsets):
    for i, o in enumerate(offsets):
        if o != i:
            return i
    return len(offsets)


def first_unsorted(values):
    for i in range(1, len(values)):
        if values[i] < values[i - 1]:
            return i
    return None


def _damage_tail(kind: str, rng: random.Random, next_offset: int) -> bytes:
    """Bytes a crash could leave after the last complete batch (none of them acknowledged)."""
    batch = wire.record_batch([(b"torn", b"x" * 300)] * 3, int(time.time() * 1000), base_offset=next_offset)
    if kind == "partial-batch":
        return batch[: rng.randrange(13, len(batch) - 1)]
    if kind == "bad-crc":
        damaged = bytearray(batch)
        damaged[-5] ^= 0x55
        return bytes(damaged)
    if kind == "zeros":
        return b"\x00" * rng.randrange(1, 4096)  # preallocated or unwritten blocks
    return rng.randbytes(rng.randrange(1, 4096))


@pytest.mark.parametrize("kind", ["partial-batch", "bad-crc", "zeros", "garbage"])
def test_torn_tail_is_truncated_on_recovery(broker, kind):
    rng = random.Random(seed())
    topic = unique_topic(f"torn-{kind}")
    create_topic(broker.bootstrap, topic, 1)
    delivery = Delivery()
    producer = Producer(producer_config(broker.bootstrap, **{"acks": "all", "linger.ms": 2}))
    for i in range(500):
        producer.produce(topic, value=f"v{i}".encode(), partition=0, on_delivery=delivery.callback)
    flush_all(producer)
    assert len(delivery.acked) == 500
    broker.kill()

    logs = sorted(pathlib.Path(broker.partition_dir(topic, 0)).glob("*.log"))
    assert logs, f"no segment files in {broker.partition_dir(topic, 0)}"
    with open(logs[-1], "ab") as segment:
        segment.write(_damage_tail(kind, rng, next_offset=500))
    broker.start()

    assert watermarks(broker.bootstrap, topic, 0) == (0, 500), f"{kind}: log end after recovery, wanted 500"
    records = consume_partitions(broker.bootstrap, topic, [0])[0]
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(500)], f"{kind}: acknowledged records changed"
    delivery = Delivery()
    producer = Producer(producer_config(broker.bootstrap, **{"acks": "all"}))
    producer.produce(topic, value=b"after", partition=0, on_delivery=delivery.callback)
    flush_all(producer)
    assert [(p, o) for p, o, _, _ in delivery.acked] == [(0, 500)], f"{kind}: append after recovery: {delivery.acked} {delivery.failed}"
    records = consume_partitions(broker.bootstrap, topic, [0], start_offset=498)[0]
    assert [r.value for r in records] == [b"v498", b"v499", b"after"], f"{kind}: the new record is not readable after the old tail"
