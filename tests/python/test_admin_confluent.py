"""Topic administration through librdkafka's AdminClient, and the errors Kafka gives."""

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
)

from clients import (
    ADMIN_TIMEOUT_S,
    Delivery,
    admin_client,
    consume_partitions,
    create_topic,
    flush_all,
    producer_config,
    unique_topic,
    wait_for_partitions,
)

# Topic configs that Kafka always lists in DescribeConfigs and that Runnel documents.
EXPECTED_TOPIC_CONFIGS = {
    "cleanup.policy": "delete",
    "compression.type": "producer",
    "retention.ms": "604800000",
    "retention.bytes": "-1",
    "segment.bytes": "1073741824",
    "segment.ms": "604800000",
    "max.message.bytes": "1048588",
    "flush.messages": "9223372036854775807",
    "flush.ms": None,  # Runnel's default differs from Kafka's on purpose (see broker config)
    "index.interval.bytes": "4096",
    "min.insync.replicas": "1",
    "message.timestamp.type": "CreateTime",
    "segment.index.bytes": "10485760",
    "delete.retention.ms": "86400000",
    "file.delete.delay.ms": "60000",
    "min.cleanable.dirty.ratio": "0.5",
    "unclean.leader.election.enable": "false",
}


def describe_topic_configs(bootstrap, topic):
    admin = admin_client(bootstrap)
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)], request_timeout=ADMIN_TIMEOUT_S)
    (future,) = futures.values()
    return future.result(timeout=ADMIN_TIMEOUT_S)


def create_error(bootstrap, new_topic, **kwargs):
    """The KafkaError a CreateTopics gives back (None if it succeeded)."""
    admin = admin_client(bootstrap)
    futures = admin.create_topics([new_topic], operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S, **kwargs)
    try:
        futures[new_topic.topic].result(timeout=ADMIN_TIMEOUT_S)
        return None
    except KafkaException as e:
        return e.args[0]


def topic_names(bootstrap):
    # list_topics() without a topic asks for all topics and so never auto-creates one.
    return set(admin_client(bootstrap).list_topics(timeout=10).topics)


def test_create_describe_alter_partitions_delete(broker):
    bootstrap = broker.bootstrap
    topic = unique_topic("admin")
    admin = admin_client(bootstrap)
    create_topic(bootstrap, topic, partitions=3, config={"retention.ms": "3600000", "segment.bytes": "1048576"})
    assert topic in topic_names(bootstrap)

    configs = describe_topic_configs(bootstrap, topic)
    missing = sorted(set(EXPECTED_TOPIC_CONFIGS) - set(configs))
    assert not missing, f"DescribeConfigs lacks {missing}; listed {sorted(configs)}"
    no_value = sorted(name for name, entry in configs.items() if entry.value is None and not entry.is_sensitive)
    assert not no_value, f"configs listed without a value: {no_value}"
    for name, override in [("retention.ms", "3600000"), ("segment.bytes", "1048576")]:
        entry = configs[name]
        assert entry.value == override, f"{name} = {entry.value}, wanted the override {override}"
        assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, f"{name}: source {entry.source}, wanted DYNAMIC_TOPIC_CONFIG"
        assert not entry.is_default, f"{name} is an override but is_default is set"
    for name, default in EXPECTED_TOPIC_CONFIGS.items():
        if name in ("retention.ms", "segment.bytes"):
            continue
        entry = configs[name]
        assert entry.source == ConfigSource.DEFAULT_CONFIG.value, f"{name}: source {entry.source}, wanted DEFAULT_CONFIG"
        assert entry.is_default, f"{name} is not overridden but is_default is not set"
        if default is not None:
            assert entry.value == default, f"{name} default {entry.value}, Kafka's is {default}"

    # IncrementalAlterConfigs: set one, delete (revert to default) another.
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("segment.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
            ConfigEntry("max.message.bytes", "500000", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    for future in admin.incremental_alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S).values():
        future.result(timeout=ADMIN_TIMEOUT_S)
    configs = describe_topic_configs(bootstrap, topic)
    assert configs["retention.ms"].value == "7200000", f"after SET retention.ms = {configs['retention.ms'].value}"
    assert configs["max.message.bytes"].value == "500000"
    assert configs["segment.bytes"].value == "1073741824", f"after DELETE segment.bytes = {configs['segment.bytes'].value}"
    assert configs["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value, "segment.bytes after DELETE is not a default"

    # CreatePartitions: 3 → 5, and the new partitions take records.
    for future in admin.create_partitions([NewPartitions(topic, 5)], request_timeout=ADMIN_TIMEOUT_S).values():
        future.result(timeout=ADMIN_TIMEOUT_S)
    wait_for_partitions(bootstrap, topic, 5)
    delivery = Delivery()
    producer = Producer(producer_config(bootstrap))
    for p in range(5):
        producer.produce(topic, value=f"p{p}".encode(), partition=p, on_delivery=delivery.callback)
    flush_all(producer)
    assert not delivery.failed, f"produce to grown topic failed: {delivery.failed}"
    records = consume_partitions(bootstrap, topic, range(5))
    assert {p: [r.value for r in rs] for p, rs in records.items()} == {p: [f"p{p}".encode()] for p in range(5)}

    # DeleteTopics: gone from Metadata.
    for future in admin.delete_topics([topic], operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S).values():
        future.result(timeout=ADMIN_TIMEOUT_S)
    assert topic not in topic_names(bootstrap), "deleted topic still listed in Metadata"


def test_alter_configs_replaces_the_whole_set(broker):
    """The legacy AlterConfigs API replaces all overrides: those not named return to defaults."""
    topic = unique_topic("alter")
    create_topic(broker.bootstrap, topic, 1, config={"retention.ms": "3600000"})
    admin = admin_client(broker.bootstrap)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, set_config={"max.message.bytes": "200000"})
    for future in admin.alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S).values():
        future.result(timeout=ADMIN_TIMEOUT_S)
    configs = describe_topic_configs(broker.bootstrap, topic)
    assert configs["max.message.bytes"].value == "200000"
    assert configs["max.message.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].value == "604800000", f"retention.ms = {configs['retention.ms'].value} after AlterConfigs without it"
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value


def test_static_broker_config_is_the_topic_default(broker_factory):
    broker = broker_factory(sets={"log.segment.bytes": "2000000"})
    topic = unique_topic("static")
    create_topic(broker.bootstrap, topic, 1)
    entry = describe_topic_configs(broker.bootstrap, topic)["segment.bytes"]
    assert entry.value == "2000000", f"segment.bytes = {entry.value}, broker set log.segment.bytes=2000000"
    assert entry.source == ConfigSource.STATIC_BROKER_CONFIG.value, f"source {entry.source}, wanted STATIC_BROKER_CONFIG"


def test_create_existing_topic_is_topic_already_exists(broker):
    topic = unique_topic("dup")
    create_topic(broker.bootstrap, topic, 2)
    err = create_error(broker.bootstrap, NewTopic(topic, num_partitions=2, replication_factor=1))
    assert err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS, f"second create: {err}"


@pytest.mark.parametrize(
    "config",
    [{"retention.ms": "not-a-number"}, {"cleanup.policy": "shred"}, {"no.such.config": "1"}, {"segment.bytes": "1"}],
    ids=["not-a-number", "bad-choice", "unknown-name", "below-minimum"],
)
def test_create_with_invalid_config_is_invalid_config(broker, config):
    topic = unique_topic("badcfg")
    err = create_error(broker.bootstrap, NewTopic(topic, num_partitions=1, replication_factor=1, config=config))
    assert err is not None and err.code() == KafkaError.INVALID_CONFIG, f"create with {config}: {err}, wanted INVALID_CONFIG (40)"
    assert topic not in topic_names(broker.bootstrap), "a topic refused for its config was created anyway"


def test_create_with_zero_partitions_is_invalid_partitions(broker):
    topic = unique_topic("zero")
    err = create_error(broker.bootstrap, NewTopic(topic, num_partitions=0, replication_factor=1))
    assert err is not None and err.code() == KafkaError.INVALID_PARTITIONS, f"0 partitions: {err}, wanted INVALID_PARTITIONS (37)"


def test_create_with_replication_factor_above_broker_count(broker):
    topic = unique_topic("rf")
    err = create_error(broker.bootstrap, NewTopic(topic, num_partitions=1, replication_factor=3))
    assert err is not None and err.code() == KafkaError.INVALID_REPLICATION_FACTOR, (
        f"replication factor 3 on one broker: {err}, wanted INVALID_REPLICATION_FACTOR (38)"
    )


def test_create_partitions_cannot_shrink(broker):
    topic = unique_topic("shrink")
    create_topic(broker.bootstrap, topic, 4)
    admin = admin_client(broker.bootstrap)  # must outlive the futures
    futures = admin.create_partitions([NewPartitions(topic, 2)], request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as raised:
        futures[topic].result(timeout=ADMIN_TIMEOUT_S)
    assert raised.value.args[0].code() == KafkaError.INVALID_PARTITIONS, f"4 → 2 partitions: {raised.value}"


def test_delete_unknown_topic_is_unknown_topic(broker):
    topic = unique_topic("ghost")
    admin = admin_client(broker.bootstrap)  # must outlive the futures
    futures = admin.delete_topics([topic], operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as raised:
        futures[topic].result(timeout=ADMIN_TIMEOUT_S)
    assert raised.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, f"delete unknown topic: {raised.value}"


def test_max_message_bytes_is_enforced_on_produce(broker):
    topic = unique_topic("maxbytes")
    create_topic(broker.bootstrap, topic, 1, config={"max.message.bytes": "10000"})
    delivery = Delivery()
    producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 0, "compression.type": "none"}))
    producer.produce(topic, value=b"s" * 100, partition=0, on_delivery=delivery.callback)
    flush_all(producer)
    producer.produce(topic, value=b"x" * 20000, partition=0, on_delivery=delivery.callback)
    flush_all(producer)
    assert len(delivery.acked) == 1, f"small record not acknowledged: {delivery.failed}"
    assert len(delivery.failed) == 1, "a 20000-byte record was accepted by a topic with max.message.bytes=10000"
    err = delivery.failed[0][0]
    assert err.code() == KafkaError.MSG_SIZE_TOO_LARGE, f"oversized record: {err}, wanted MESSAGE_TOO_LARGE (10)"
    records = consume_partitions(broker.bootstrap, topic, [0])[0]
    assert [r.value for r in records] == [b"s" * 100], "the refused record is in the log"


def test_create_with_illegal_names_is_invalid_topic(broker):
    """Names become directory names: Kafka allows [a-zA-Z0-9._-], at most 249, not '.' or '..'."""
    illegal = ["bad/name", "..", ".", "", "a" * 250, "spaces here", "../../escape", "ümlaut"]
    for name in illegal:
        err = create_error(broker.bootstrap, NewTopic(name, num_partitions=1, replication_factor=1))
        assert err is not None and err.code() == KafkaError.TOPIC_EXCEPTION, f"create {name!r}: {err}, wanted INVALID_TOPIC_EXCEPTION (17)"
    listed = topic_names(broker.bootstrap)
    assert not (set(illegal) & listed), f"illegal names listed as topics: {set(illegal) & listed}"
    escaped = [p for p in broker.data_dir.parent.iterdir() if "escape" in p.name]
    assert not escaped, f"files created outside the data dir: {escaped}"
    assert create_error(broker.bootstrap, NewTopic("Legal_name-1.x", num_partitions=1, replication_factor=1)) is None
    assert create_error(broker.bootstrap, NewTopic("b" * 249, num_partitions=1, replication_factor=1)) is None


def test_create_validate_only_creates_nothing(broker):
    topic = unique_topic("dryrun")
    assert create_error(broker.bootstrap, NewTopic(topic, num_partitions=2, replication_factor=1), validate_only=True) is None
    assert topic not in topic_names(broker.bootstrap), "validate_only created the topic"
    err = create_error(broker.bootstrap, NewTopic(topic, num_partitions=1, replication_factor=1, config={"retention.ms": "x"}), validate_only=True)
    assert err is not None and err.code() == KafkaError.INVALID_CONFIG, f"validate_only with a bad config: {err}"


def test_incremental_alter_with_invalid_value_changes_nothing(broker):
    topic = unique_topic("badalter")
    create_topic(broker.bootstrap, topic, 1, config={"retention.ms": "3600000"})
    admin = admin_client(broker.bootstrap)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.bytes", "lots", incremental_operation=AlterConfigOpType.SET),
    ])
    futures = admin.incremental_alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as raised:
        next(iter(futures.values())).result(timeout=ADMIN_TIMEOUT_S)
    assert raised.value.args[0].code() == KafkaError.INVALID_CONFIG, f"alter with segment.bytes=lots: {raised.value}"
    configs = describe_topic_configs(broker.bootstrap, topic)
    assert configs["retention.ms"].value == "3600000", "a refused alter request applied part of its changes"


def test_alter_configs_of_unknown_topic(broker):
    admin = admin_client(broker.bootstrap)
    resource = ConfigResource(ConfigResource.Type.TOPIC, unique_topic("nope"), incremental_configs=[
        ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET)])
    futures = admin.incremental_alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as raised:
        next(iter(futures.values())).result(timeout=ADMIN_TIMEOUT_S)
    assert raised.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, f"alter unknown topic: {raised.value}"
