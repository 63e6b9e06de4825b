"""Produce acks levels and Fetch behaviours that real consumers depend on."""

import threading
import time

from confluent_kafka import OFFSET_END, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from clients import (
    ADMIN_TIMEOUT_S,
    Delivery,
    admin_client,
    consume_partitions,
    consumer_config,
    create_topic,
    flush_all,
    produce_or_wait,
    producer_config,
    unique_topic,
    wait_for_partitions,
    watermarks,
)


def test_acks_0_1_all_each_deliver(broker):
    topic = unique_topic("acks")
    create_topic(broker.bootstrap, topic, 1)
    for acks in ("0", "1", "all"):
        delivery = Delivery()
        producer = Producer(producer_config(broker.bootstrap, **{"acks": acks}))
        for i in range(100):
            producer.produce(topic, value=f"acks={acks}:{i}".encode(), partition=0, on_delivery=delivery.callback)
        flush_all(producer)
        assert not delivery.failed and len(delivery.acked) == 100, f"acks={acks}: {delivery.failed[:3]}"
    records = consume_partitions(broker.bootstrap, topic, [0])[0]
    want = [f"acks={a}:{i}".encode() for a in ("0", "1", "all") for i in range(100)]
    assert [r.value for r in records] == want, "records differ from what was produced with acks 0, 1, all"


def test_fetch_from_an_offset_inside_a_batch(broker):
    """The broker may return the whole batch; the client must still start at the asked offset."""
    topic = unique_topic("midbatch")
    create_topic(broker.bootstrap, topic, 1)
    producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 200, "batch.num.messages": 1000}))
    for i in range(100):
        producer.produce(topic, value=f"r{i}".encode(), partition=0)
    flush_all(producer)  # one linger window: one or a few batches of up to 100 records
    for start in (1, 37, 50, 99):
        records = consume_partitions(broker.bootstrap, topic, [0], timeout_s=20, start_offset=start)[0]
        assert [r.offset for r in records] == list(range(start, 100)), f"from offset {start}: offsets {[r.offset for r in records][:5]}..."
        assert records[0].value == f"r{start}".encode()


def test_batches_larger_than_the_fetch_limits_are_still_returned(broker):
    """KIP-74: the first batch is returned even when it exceeds max.partition.fetch.bytes."""
    topic = unique_topic("bigbatch")
    create_topic(broker.bootstrap, topic, 1)
    values = [bytes([i]) * 900_000 for i in range(3)] + [b"small"]
    producer = Producer(producer_config(broker.bootstrap, **{"compression.type": "none", "linger.ms": 0}))
    for v in values:
        producer.produce(topic, value=v, partition=0)
        flush_all(producer)
    records = consume_partitions(broker.bootstrap, topic, [0], timeout_s=30,
                                 **{"max.partition.fetch.bytes": 1024, "fetch.max.bytes": 1024 * 1024})[0]
    assert [r.value for r in records] == values, f"read back {[len(r.value) for r in records]} byte values"


def test_long_poll_returns_as_soon_as_data_arrives(broker):
    topic = unique_topic("longpoll")
    create_topic(broker.bootstrap, topic, 1)
    consumer = Consumer(consumer_config(broker.bootstrap, **{"fetch.wait.max.ms": 5000}))
    received = []

    def consume():
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                received.append((time.monotonic(), msg.value()))

    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        time.sleep(1.5)  # the consumer is now parked in a long poll
        producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 0}))
        producer.produce(topic, value=b"wake up", partition=0)
        flush_all(producer)
        acked_at = time.monotonic()
        thread.join(timeout=25)
    finally:
        consumer.close()
    assert received, "the long-polling consumer never received the record"
    latency_s = received[0][0] - acked_at
    assert received[0][1] == b"wake up"
    assert latency_s < 2.0, f"record reached a long-polling consumer {latency_s:.2f} s after its ack (fetch.wait.max.ms=5000): the poll was not woken"


def test_recreated_topic_starts_empty(broker):
    topic = unique_topic("recreate")
    create_topic(broker.bootstrap, topic, 2)
    producer = Producer(producer_config(broker.bootstrap))
    for i in range(50):
        produce_or_wait(producer, topic, value=b"old", partition=i % 2)
    flush_all(producer)
    admin = admin_client(broker.bootstrap)
    admin.delete_topics([topic], operation_timeout=ADMIN_TIMEOUT_S)[topic].result(timeout=ADMIN_TIMEOUT_S)
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while time.monotonic() < deadline:
        futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)], operation_timeout=ADMIN_TIMEOUT_S)
        try:
            futures[topic].result(timeout=ADMIN_TIMEOUT_S)
            break
        except Exception as e:  # Kafka may say the topic is still being deleted: retry, bounded
            last = e
            time.sleep(0.2)
    else:
        raise AssertionError(f"could not re-create {topic} after deleting it: {last}")
    wait_for_partitions(broker.bootstrap, topic, 1)
    assert watermarks(broker.bootstrap, topic, 0) == (0, 0), "a re-created topic shows the deleted topic's records"
    broker.restart()
    assert watermarks(broker.bootstrap, topic, 0) == (0, 0), "the deleted topic's records came back after a restart"


def test_describe_cluster(broker):
    admin = admin_client(broker.bootstrap)
    cluster = admin.describe_cluster(request_timeout=20).result(timeout=20)
    assert cluster.cluster_id, f"no cluster id: {cluster}"
    addresses = [(n.host, n.port) for n in cluster.nodes]
    assert addresses == [("127.0.0.1", broker.kafka_port)], f"cluster nodes {addresses}"
    assert cluster.controller is not None and cluster.controller.id == cluster.nodes[0].id, f"controller {cluster.controller}"
    cluster_id = cluster.cluster_id
    broker.restart()
    admin = admin_client(broker.bootstrap)
    again = admin.describe_cluster(request_timeout=20).result(timeout=20)
    assert again.cluster_id == cluster_id, f"cluster id changed across restart: {cluster_id} → {again.cluster_id}"


def test_auto_create_disabled_gives_unknown_topic(broker_factory):
    broker = broker_factory(sets={"auto.create.topics.enable": "false"})
    topic = unique_topic("noauto")
    metadata = admin_client(broker.bootstrap).list_topics(topic=topic, timeout=10)
    found = metadata.topics.get(topic)
    assert found is not None and found.error is not None, f"Metadata for a missing topic: {found}"
    assert found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, f"Metadata error {found.error}, wanted UNKNOWN_TOPIC_OR_PART"
    assert topic not in admin_client(broker.bootstrap).list_topics(timeout=10).topics, "topic created despite auto.create.topics.enable=false"


def test_config_file_sets_broker_defaults(broker_factory, tmp_path):
    config = tmp_path / "runnel.toml"
    config.write_text('"num.partitions" = 4\n"log.segment.bytes" = 2000000\n')
    broker = broker_factory(extra_args=["--config", str(config)])
    topic = unique_topic("cfgfile")
    producer = Producer(producer_config(broker.bootstrap))
    producer.produce(topic, value=b"x")  # auto-creates with num.partitions
    flush_all(producer)
    partitions = admin_client(broker.bootstrap).list_topics(timeout=10).topics[topic].partitions
    assert len(partitions) == 4, f"auto-created topic has {len(partitions)} partitions; the config file says num.partitions = 4"


def test_fetch_past_the_end_resets_by_auto_offset_reset(broker):
    """OFFSET_OUT_OF_RANGE for an offset past the log end; the client resets to earliest."""
    topic = unique_topic("outofrange")
    create_topic(broker.bootstrap, topic, 1)
    producer = Producer(producer_config(broker.bootstrap))
    for i in range(10):
        producer.produce(topic, value=f"r{i}".encode(), partition=0)
    flush_all(producer)
    records = consume_partitions(broker.bootstrap, topic, [0], timeout_s=20, start_offset=1000)[0]
    assert [r.offset for r in records] == list(range(10)), f"offsets after a reset from 1000: {[r.offset for r in records]}"
