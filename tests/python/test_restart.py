"""A clean restart (SIGTERM, start again on the same data dir) keeps records, topics and configs."""

import threading
import time

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, ConfigSource

from clients import (
    ADMIN_TIMEOUT_S,
    Delivery,
    admin_client,
    consume_partitions,
    consumer_config,
    create_topic,
    flush_all,
    producer_config,
    unique_topic,
    watermarks,
)
from runnel_harness import BrokerFailure

PARTITIONS = 3
RECORDS = 3000


def produce(bootstrap, topic, values, partitions):
    delivery = Delivery()
    producer = Producer(producer_config(bootstrap, **{"acks": "1"}))
    for i, value in enumerate(values):
        producer.produce(topic, key=f"k{i}".encode(), value=value, partition=i % partitions, on_delivery=delivery.callback)
        if i % 1000 == 0:
            producer.poll(0)
    flush_all(producer)
    assert not delivery.failed, f"delivery failed: {delivery.failed[:3]}"


def read_values(bootstrap, topic, partitions):
    records = consume_partitions(bootstrap, topic, range(partitions))
    return {p: [r.value for r in rs] for p, rs in records.items()}


def test_sigterm_restart_keeps_data_topics_and_configs(broker):
    topic = unique_topic("restart")
    auto_topic = unique_topic("restart-auto")
    create_topic(broker.bootstrap, topic, PARTITIONS, config={"retention.ms": "123456789", "max.message.bytes": "300000"})
    values = [f"value-{i}".encode() for i in range(RECORDS)]
    produce(broker.bootstrap, topic, values, PARTITIONS)
    produce(broker.bootstrap, auto_topic, [b"auto"], 1)  # auto-created on first Metadata
    before = read_values(broker.bootstrap, topic, PARTITIONS)
    assert sum(len(v) for v in before.values()) == RECORDS

    code = broker.stop()
    assert code == 0, f"broker exited with code {code} after SIGTERM\n{broker.stderr_tail()}"
    broker.start()

    metadata = admin_client(broker.bootstrap).list_topics(timeout=10)
    assert topic in metadata.topics and auto_topic in metadata.topics, f"topics after restart: {sorted(metadata.topics)}"
    assert len(metadata.topics[topic].partitions) == PARTITIONS, "partition count changed across restart"
    assert read_values(broker.bootstrap, topic, PARTITIONS) == before, "records differ after restart"
    assert read_values(broker.bootstrap, auto_topic, 1) == {0: [b"auto"]}

    admin = admin_client(broker.bootstrap)  # must outlive the futures
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)], request_timeout=ADMIN_TIMEOUT_S)
    configs = next(iter(futures.values())).result(timeout=ADMIN_TIMEOUT_S)
    for name, value in [("retention.ms", "123456789"), ("max.message.bytes", "300000")]:
        assert configs[name].value == value, f"{name} = {configs[name].value} after restart, wanted {value}"
        assert configs[name].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, f"{name} no longer an override after restart"

    # Appends continue at the old end, not over it.
    produce(broker.bootstrap, topic, [b"after-restart"], 1)
    _, high = watermarks(broker.bootstrap, topic, 0)
    assert high == len(before[0]) + 1, f"partition 0 high watermark {high}, wanted {len(before[0]) + 1}"


def test_restart_twice_and_sigkill_keep_acks_all_data(broker):
    topic = unique_topic("restart-kill")
    create_topic(broker.bootstrap, topic, 1)
    produce(broker.bootstrap, topic, [b"one"], 1)
    broker.restart()
    produce(broker.bootstrap, topic, [b"two"], 1)
    broker.restart()
    delivery = Delivery()
    producer = Producer(producer_config(broker.bootstrap, **{"acks": "all"}))
    producer.produce(topic, value=b"three", partition=0, on_delivery=delivery.callback)
    flush_all(producer)
    assert delivery.acked, f"acks=all produce failed: {delivery.failed}"
    broker.kill()
    broker.start()
    assert read_values(broker.bootstrap, topic, 1) == {0: [b"one", b"two", b"three"]}


def test_sigterm_under_load_drains_and_keeps_every_ack(broker):
    """SIGTERM while a producer is busy: a clean exit, and every acknowledged record is kept."""
    topic = unique_topic("drain")
    create_topic(broker.bootstrap, topic, 2)
    delivery = Delivery()
    producer = Producer(producer_config(broker.bootstrap, **{
        "acks": "all", "retries": 0, "linger.ms": 1, "message.timeout.ms": 5000,
        "reconnect.backoff.max.ms": 200,
    }))
    stop = threading.Event()
    sent = [0]

    def produce_loop():
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline and sent[0] < 500_000:
            try:
                producer.produce(topic, value=f"{sent[0]}".encode(), partition=sent[0] % 2, on_delivery=delivery.callback)
                sent[0] += 1
            except BufferError:
                producer.poll(0.01)
            if sent[0] % 200 == 0:
                producer.poll(0)

    thread = threading.Thread(target=produce_loop, daemon=True)
    thread.start()
    time.sleep(1.0)
    code = broker.stop()
    stop.set()
    thread.join(timeout=40)
    assert code == 0, f"broker exited with code {code} on SIGTERM under load\n{broker.stderr_tail()}"
    broker.start()
    remaining = producer.flush(20)
    assert remaining == 0, f"{remaining} records neither acknowledged nor failed"
    assert delivery.acked, "nothing was acknowledged before SIGTERM: the test tested nothing"

    records = consume_partitions(broker.bootstrap, topic, [0, 1], timeout_s=60)
    in_log = {(p, r.offset): r.value for p, rs in records.items() for r in rs}
    lost = [(p, o, v) for p, o, _k, v in delivery.acked if in_log.get((p, o)) != v]
    assert not lost, f"{len(lost)} of {len(delivery.acked)} acknowledged records missing or moved after SIGTERM, e.g. {lost[:5]}"


def test_sigterm_does_not_wait_out_parked_long_polls(broker):
    """A consumer parked in a long poll has nothing in flight: shutdown answers it and exits.

    Kafka does not hold shutdown for delayed fetches; a broker that does makes every restart
    as slow as its clients' fetch.wait.max.ms (or its own drain timeout).
    """
    topic = unique_topic("parked")
    create_topic(broker.bootstrap, topic, 1)
    consumer = Consumer(consumer_config(broker.bootstrap, **{"fetch.wait.max.ms": 30000}))
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        deadline = time.monotonic() + 3  # long enough for the first Fetch to be parked
        while time.monotonic() < deadline:
            consumer.poll(0.2)
        started = time.monotonic()
        code = broker.stop()
        took_s = time.monotonic() - started
    finally:
        consumer.close()
    assert code == 0, f"exit code {code} after SIGTERM"
    assert took_s < 3.0, f"SIGTERM took {took_s:.1f} s to exit with one consumer parked in a 30 s long poll"


def test_second_broker_on_the_same_data_dir_refuses_to_start(broker, broker_factory):
    """Two processes appending to one log corrupt it: the data dir is locked (Kafka's .lock)."""
    topic = unique_topic("locked")
    create_topic(broker.bootstrap, topic, 1)
    produce(broker.bootstrap, topic, [b"kept"], 1)
    try:
        intruder = broker_factory(data_dir=broker.data_dir, name="intruder")
    except BrokerFailure:
        intruder = None  # refused to start: what we want
    if intruder is not None:
        intruder.kill()
        raise AssertionError("a second broker started on a data dir that another running broker owns")
    assert broker.health() == 200
    assert read_values(broker.bootstrap, topic, 1) == {0: [b"kept"]}
