"""librdkafka (confluent-kafka) at volume: 100k keyed records over 6 partitions, acks=all;
and several producers appending to the same partitions at once."""

import threading
from collections import Counter, defaultdict

from confluent_kafka import Producer

from clients import Delivery, consume_partitions, create_topic, flush_all, produce_or_wait, producer_config, unique_topic

RECORDS = 100_000
KEYS = 1000
PARTITIONS = 6


def test_100k_keyed_records_no_loss_no_duplicates_per_key_order(broker):
    topic = unique_topic("volume")
    create_topic(broker.bootstrap, topic, partitions=PARTITIONS)

    delivery = Delivery()
    producer = Producer(producer_config(broker.bootstrap, **{"acks": "all", "linger.ms": 10,
                                                           "queue.buffering.max.messages": 200_000}))
    next_seq = [0] * KEYS
    for i in range(RECORDS):
        k = i % KEYS
        key = f"key-{k:04d}".encode()
        value = f"key-{k:04d}:{next_seq[k]}".encode()
        next_seq[k] += 1
        produce_or_wait(producer, topic, key=key, value=value, on_delivery=delivery.callback)
        if i % 10_000 == 0:
            producer.poll(0)
    flush_all(producer, timeout_s=120)

    assert not delivery.failed, f"{len(delivery.failed)} records failed delivery, first: {delivery.failed[:3]}"
    assert len(delivery.acked) == RECORDS, f"{len(delivery.acked)} delivery reports for {RECORDS} records"
    used_partitions = {p for p, _, _, _ in delivery.acked}
    assert used_partitions == set(range(PARTITIONS)), f"keys landed only on partitions {used_partitions}"

    records = consume_partitions(broker.bootstrap, topic, range(PARTITIONS), timeout_s=120)
    total = sum(len(rs) for rs in records.values())
    assert total == RECORDS, f"consumed {total} records, produced {RECORDS}"

    values = Counter(r.value for rs in records.values() for r in rs)
    duplicates = [v for v, n in values.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} values consumed more than once, e.g. {duplicates[:5]}"

    # Offsets are dense from 0 and every acknowledged offset holds the acknowledged record.
    for p, rs in records.items():
        offsets = [r.offset for r in rs]
        assert offsets == list(range(len(rs))), f"partition {p}: offsets not contiguous from 0"
    by_position = {(r.partition, r.offset): r.value for rs in records.values() for r in rs}
    wrong = [(p, o, v, by_position.get((p, o))) for p, o, _, v in delivery.acked if by_position.get((p, o)) != v]
    assert not wrong, f"{len(wrong)} acknowledged (partition, offset) hold other values, e.g. {wrong[:3]}"

    seqs_by_key = defaultdict(list)
    partition_of_key = defaultdict(set)
    for p, rs in records.items():
        for r in rs:
            key, seq = r.value.decode().split(":")
            assert r.key.decode() == key, f"record key {r.key!r} does not match its value {r.value!r}"
            seqs_by_key[key].append(int(seq))
            partition_of_key[key].add(p)
    assert len(seqs_by_key) == KEYS, f"{len(seqs_by_key)} distinct keys consumed, wanted {KEYS}"
    for key, seqs in seqs_by_key.items():
        assert len(partition_of_key[key]) == 1, f"key {key} on several partitions {partition_of_key[key]}"
        assert seqs == list(range(len(seqs))), f"key {key}: sequence out of order or gapped: {seqs[:20]}"


def test_concurrent_producers_to_the_same_partitions(broker):
    """Appends from many connections at once get distinct offsets and keep each producer's order."""
    topic = unique_topic("concurrent")
    create_topic(broker.bootstrap, topic, partitions=2)
    producers, per_producer = 4, 10_000
    deliveries = [Delivery() for _ in range(producers)]
    errors = []

    def run(n):
        try:
            producer = Producer(producer_config(broker.bootstrap, **{"acks": "1", "linger.ms": n * 3}))
            for i in range(per_producer):
                produce_or_wait(producer, topic, value=f"{n}:{i}".encode(), partition=i % 2, on_delivery=deliveries[n].callback)
            flush_all(producer)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, f"producer threads failed: {errors}"
    assert all(not d.failed and len(d.acked) == per_producer for d in deliveries), "some records were not acknowledged"
    acked_positions = [(p, o) for d in deliveries for p, o, _, _ in d.acked]
    assert len(set(acked_positions)) == len(acked_positions), "two records acknowledged at the same offset"

    records = consume_partitions(broker.bootstrap, topic, [0, 1], timeout_s=60)
    assert sum(len(rs) for rs in records.values()) == producers * per_producer
    for p, rs in records.items():
        last = {}
        for r in rs:
            n, i = map(int, r.value.decode().split(":"))
            assert i > last.get(n, -1), f"partition {p}: producer {n} record {i} after {last.get(n)}"
            last[n] = i
