"""kafka-python: keys, headers, null keys and null values (tombstones), and topic admin."""

import pytest

from clients import consume_partitions, create_topic, kafka_python_consume, unique_topic

RECORDS = [
    # (key, value, headers)
    (b"k1", b"v1", [("trace", b"abc"), ("n", b"1")]),
    (b"k2", None, []),  # tombstone: the value must stay null, not become b""
    (None, b"keyless", [("h", b"")]),
    (b"k3", b"", [("dup", b"a"), ("dup", b"b")]),  # empty (not null) value; repeated header key
    (b"", b"empty-key", []),
]


def produce_kafka_python(bootstrap, topic):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                             enable_idempotence=False)  # no InitProducerId in the broker yet
    try:
        futures = [producer.send(topic, key=k, value=v, headers=h, partition=0) for k, v, h in RECORDS]
        producer.flush(timeout=30)
        return [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=10)


def test_round_trip_keys_headers_nulls(broker):
    topic = unique_topic("kp-roundtrip")
    create_topic(broker.bootstrap, topic, 1)
    metadata = produce_kafka_python(broker.bootstrap, topic)
    assert [m.offset for m in metadata] == list(range(len(RECORDS))), f"acknowledged offsets {[m.offset for m in metadata]}"

    got = kafka_python_consume(broker.bootstrap, topic, [0], expected=len(RECORDS))
    assert len(got) == len(RECORDS)
    for (key, value, headers), record in zip(RECORDS, got):
        assert record.key == key, f"offset {record.offset}: key {record.key!r}, wanted {key!r}"
        assert record.value == value, f"offset {record.offset}: value {record.value!r}, wanted {value!r}"
        assert list(record.headers) == headers, f"offset {record.offset}: headers {record.headers}, wanted {headers}"

    # librdkafka reads the same records the same way.
    records = consume_partitions(broker.bootstrap, topic, [0])[0]
    for (key, value, headers), record in zip(RECORDS, records):
        assert record.key == key, f"confluent offset {record.offset}: key {record.key!r}, wanted {key!r}"
        assert record.value == value, f"confluent offset {record.offset}: value {record.value!r}, wanted {value!r}"
        assert (record.headers or []) == headers, f"confluent offset {record.offset}: headers {record.headers}"


def test_admin_create_describe_delete(broker):
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    topic = unique_topic("kp-admin")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=20000)
    try:
        admin.create_topics({topic: {"num_partitions": 2, "replication_factor": 1,
                                     "configs": {"retention.ms": "86400000"}}})
        assert topic in admin.list_topics(), "created topic not listed"

        described = admin.describe_topics([topic])
        assert len(described) == 1 and described[0]["error_code"] == 0, f"describe_topics: {described}"
        ids = sorted(p.get("partition_index", p.get("partition")) for p in described[0]["partitions"])
        assert ids == [0, 1], f"partitions {ids}"

        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        entries = described["topic"][topic]
        assert entries["retention.ms"]["value"] == "86400000", f"retention.ms: {entries.get('retention.ms')}"
        assert entries["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG", f"retention.ms: {entries['retention.ms']}"
        assert entries["cleanup.policy"]["value"] == "delete", f"cleanup.policy: {entries.get('cleanup.policy')}"
        assert entries["cleanup.policy"]["config_source"] == "DEFAULT_CONFIG", f"cleanup.policy: {entries['cleanup.policy']}"

        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}})

        admin.delete_topics([topic], timeout_ms=20000)
        assert topic not in admin.list_topics(), "deleted topic still listed"
    finally:
        admin.close()
