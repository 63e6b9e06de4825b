"""ListOffsets: earliest/latest and by timestamp (the first record at or after it)."""

import time

from confluent_kafka import Consumer, Producer, TopicPartition

from clients import consumer_config, create_topic, flush_all, produce_or_wait, producer_config, unique_topic, watermarks

RECORDS = 300
STEP_MS = 1000


def produce_with_timestamps(bootstrap, topic, timestamps, batch_every=25):
    producer = Producer(producer_config(bootstrap, **{"linger.ms": 0, "batch.num.messages": 10}))
    for i, ts in enumerate(timestamps):
        produce_or_wait(producer, topic, value=f"r{i}".encode(), partition=0, timestamp=ts)
        if i % batch_every == batch_every - 1:
            flush_all(producer)  # several batches, so the lookup crosses batch boundaries
    flush_all(producer)


def offsets_for(bootstrap, topic, timestamps_ms):
    """One ListOffsets per timestamp: a request names each partition at most once."""
    consumer = Consumer(consumer_config(bootstrap))
    try:
        offsets = []
        for ts in timestamps_ms:
            (tp,) = consumer.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=15)
            assert tp.error is None, f"offsets_for_times error for timestamp {ts}: {tp.error}"
            offsets.append(tp.offset)
        return offsets
    finally:
        consumer.close()


def test_offsets_for_times_confluent(broker):
    topic = unique_topic("ts")
    # retention.ms=-1: the old timestamps below must not be swept by time retention.
    create_topic(broker.bootstrap, topic, 1, config={"retention.ms": "-1"})
    base = int(time.time() * 1000) - 3_600_000
    timestamps = [base + i * STEP_MS for i in range(RECORDS)]
    produce_with_timestamps(broker.bootstrap, topic, timestamps)
    assert watermarks(broker.bootstrap, topic, 0) == (0, RECORDS), "earliest/latest offsets"

    queries = {
        base - 10_000: 0,                     # before everything → first record
        base: 0,                              # exactly the first
        base + 1: 1,                          # between records → the next one
        base + 137 * STEP_MS: 137,            # exact match in the middle
        base + 137 * STEP_MS - 500: 137,
        base + (RECORDS - 1) * STEP_MS: RECORDS - 1,
    }
    got = offsets_for(broker.bootstrap, topic, list(queries))
    for (ts, want), offset in zip(queries.items(), got):
        assert offset == want, f"timestamp base{ts - base:+d} ms: offset {offset}, wanted {want}"

    after_all = offsets_for(broker.bootstrap, topic, [base + RECORDS * STEP_MS + 1])[0]
    assert after_all == -1, f"timestamp after every record: offset {after_all}, wanted -1 (no such record)"


def test_offsets_for_times_non_monotonic_timestamps(broker):
    """Kafka answers with the first offset, in log order, whose timestamp is >= the target."""
    topic = unique_topic("ts-order")
    create_topic(broker.bootstrap, topic, 1, config={"retention.ms": "-1"})
    base = int(time.time() * 1000) - 600_000
    timestamps = [base + 10, base + 30, base + 20, base + 40, base + 5]
    produce_with_timestamps(broker.bootstrap, topic, timestamps, batch_every=2)
    queries = {base + 15: 1, base + 25: 1, base + 31: 3, base + 40: 3, base + 41: -1, base: 0}
    got = offsets_for(broker.bootstrap, topic, list(queries))
    for (ts, want), offset in zip(queries.items(), got):
        assert offset == want, f"timestamp base+{ts - base} (log timestamps +10,+30,+20,+40,+5): offset {offset}, wanted {want}"


def test_offsets_for_times_kafka_python(broker):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTopicPartition

    topic = unique_topic("ts-kp")
    create_topic(broker.bootstrap, topic, 1, config={"retention.ms": "-1"})
    base = int(time.time() * 1000) - 3_600_000
    produce_with_timestamps(broker.bootstrap, topic, [base + i * STEP_MS for i in range(50)])
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tp = KpTopicPartition(topic, 0)
        found = consumer.offsets_for_times({tp: base + 20 * STEP_MS - 1})[tp]
        assert found is not None and found.offset == 20, f"kafka-python offsets_for_times: {found}, wanted offset 20"
        assert found.timestamp == base + 20 * STEP_MS, f"timestamp of the found record: {found.timestamp}"
        missing = consumer.offsets_for_times({tp: base + 60 * STEP_MS})[tp]
        assert missing is None, f"a timestamp after all records gave {missing}, wanted None"
        assert consumer.beginning_offsets([tp])[tp] == 0
        assert consumer.end_offsets([tp])[tp] == 50
    finally:
        consumer.close()
