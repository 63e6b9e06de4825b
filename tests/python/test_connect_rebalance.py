"""Sink tasks follow the topics' metadata while they run (Kafka Connect's rebalance): partitions
added to a topic and topics created later that match `topics.regex` are read without a restart,
each record lands once; and a second writer of the same partitions (the same connector run by
another broker against the same database) is fenced instead of writing records twice.

Real clients (librdkafka's admin and producer), the real binary and a real PostgreSQL that the
tests start themselves (the fixtures of test_connect_postgres.py).
"""

from __future__ import annotations

import json

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewPartitions

from clients import (
    ADMIN_TIMEOUT_S,
    admin_client,
    consumer_config,
    create_topic,
    flush_all,
    produce_or_wait,
    producer_config,
    unique_topic,
    wait_for_partitions,
)
from connect_support import assert_no_failed_tasks, connector_status, create_connector, rest, wait_running, wait_until
from test_connect_postgres import count, sink_config


def produce_to_partitions(broker, topic: str, rows: list[tuple[int, dict]], partitions: int) -> None:
    """Row i goes to partition i % partitions, keyed by {"id": i}, so every partition gets rows."""
    producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 20}))
    for i, value in rows:
        produce_or_wait(producer, topic, key=json.dumps({"id": i}), value=json.dumps(value), partition=i % partitions)
    flush_all(producer)


def add_partitions(broker, topic: str, total: int) -> None:
    admin = admin_client(broker.bootstrap)  # kept alive until the futures resolve
    futures = admin.create_partitions([NewPartitions(topic, total)], request_timeout=ADMIN_TIMEOUT_S)
    for future in futures.values():
        future.result(timeout=ADMIN_TIMEOUT_S)
    wait_for_partitions(broker.bootstrap, topic, total)


def ids_once(pg, database: str, table: str) -> list[int]:
    """Every id in the table, sorted; duplicates stay visible (the tables have no primary key)."""
    return sorted(int(r[0]) for r in pg.rows(f'SELECT id FROM "{table}"', database))


def stored_positions(pg, database: str, connector: str) -> dict[tuple[str, int], int]:
    rows = pg.rows(f"SELECT topic, partition, next_offset FROM runnel_connect_offsets WHERE connector = '{connector}'",
                   database)
    return {(r[0], int(r[1])): int(r[2]) for r in rows}


def plain_table(pg, database: str, table: str) -> None:
    """A table without a primary key: a record written twice shows up as two rows."""
    pg.psql(f'CREATE TABLE "{table}" (id bigint NOT NULL, n bigint NOT NULL)', database)


def insert_config(pg, database: str, **extra) -> dict:
    return sink_config(pg, database, "unused", insert_mode="insert", pk_mode="none", auto_create="false",
                       auto_evolve="false", batch_size=200, **extra)


def test_partitions_added_while_a_pg_sink_runs_land_exactly_once(broker, postgres_server, pg_database):
    topic = unique_topic("pg-grow")
    create_topic(broker.bootstrap, topic, partitions=2)
    plain_table(postgres_server, pg_database, topic)
    config = insert_config(postgres_server, pg_database, tasks_max=3)
    config["topics"] = topic
    create_connector(broker, "pggrow", config)
    wait_running(broker, "pggrow")
    first = [(i, {"id": i, "n": i}) for i in range(3000)]
    produce_to_partitions(broker, topic, first, partitions=2)
    wait_until("rows of the first partitions", lambda: count(postgres_server, pg_database, topic) >= 1000,
               interval_s=0.05)

    # Grown while the tasks write: the new partitions are read without a restart.
    add_partitions(broker, topic, 7)
    second = [(i, {"id": i, "n": i}) for i in range(3000, 10_000)]
    produce_to_partitions(broker, topic, second, partitions=7)
    wait_until("every row", lambda: count(postgres_server, pg_database, topic) >= 10_000, timeout_s=120)
    expected_positions = {(topic, p): 0 for p in range(7)}
    for i, _ in first:
        expected_positions[(topic, i % 2)] += 1
    for i, _ in second:
        expected_positions[(topic, i % 7)] += 1
    wait_until("positions of all 7 partitions stored",
               lambda: stored_positions(postgres_server, pg_database, "pggrow") == expected_positions)
    assert ids_once(postgres_server, pg_database, topic) == list(range(10_000))
    assert_no_failed_tasks(broker, "pggrow")
    status = connector_status(broker, "pggrow")
    assert sum(t["records"] for t in status["tasks"]) == 10_000
    logs = rest(broker, "GET", "/connectors/pggrow/logs")[1]
    assert any("partitions reassigned" in line for line in logs), logs


def test_a_topic_created_later_that_matches_topics_regex_is_consumed(broker, postgres_server, pg_database):
    prefix = unique_topic("pg-rx")
    early, late, other = f"{prefix}-early", f"{prefix}-late", f"{prefix}x-other"
    create_topic(broker.bootstrap, early, partitions=2)
    config = sink_config(postgres_server, pg_database, "unused", tasks_max=2)
    del config["topics"]
    config["topics.regex"] = f"{prefix}-.*"
    create_connector(broker, "pgregex", config)
    wait_running(broker, "pgregex")
    produce_to_partitions(broker, early, [(i, {"n": i}) for i in range(500)], partitions=2)
    wait_until("rows of the early topic", lambda: count(postgres_server, pg_database, early) == 500)

    # Created after the connector: one that matches (read from its start), one that does not.
    create_topic(broker.bootstrap, late, partitions=3)
    create_topic(broker.bootstrap, other, partitions=1)
    produce_to_partitions(broker, late, [(i, {"n": i}) for i in range(900)], partitions=3)
    produce_to_partitions(broker, other, [(i, {"n": i}) for i in range(50)], partitions=1)
    wait_until("rows of the late topic", lambda: count(postgres_server, pg_database, late) == 900)
    rows = postgres_server.rows(f'SELECT id, n FROM "{late}" ORDER BY id', pg_database)
    assert rows == [[str(i), str(i)] for i in range(900)]
    stored = stored_positions(postgres_server, pg_database, "pgregex")
    assert stored == {(early, 0): 250, (early, 1): 250, (late, 0): 300, (late, 1): 300, (late, 2): 300}, stored
    tables = postgres_server.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", pg_database)
    assert [other] not in tables, "a topic the pattern does not match was read"
    assert_no_failed_tasks(broker, "pgregex")


def test_topics_regex_is_checked(broker, postgres_server, pg_database):
    config = sink_config(postgres_server, pg_database, "unused")
    del config["topics"]
    for broken, fragment in [
        ({"topics.regex": "orders-("}, "topics.regex"),
        ({"topics.regex": "a.*", "topics": "a"}, "not both"),
        ({"topics.regex": "a.*", "errors.tolerance": "all", "errors.deadletterqueue.topic.name": "a-dead"},
         "dead-letter"),
    ]:
        code, body = rest(broker, "POST", "/connectors", {"name": "badrx", "config": {**config, **broken}})
        assert code == 400 and fragment in body["message"], (broken, code, body)
    # A pattern that matches nothing yet is valid: the connector waits for its topics.
    create_connector(broker, "waiting", {**config, "topics.regex": unique_topic("nothing-yet") + ".*"})
    wait_running(broker, "waiting")


def committed_in_group(broker, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer(consumer_config(broker.bootstrap, **{"group.id": group}))
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [tp.offset for tp in found]
    finally:
        consumer.close()


def test_a_second_writer_of_the_same_partitions_is_fenced(broker, broker_factory, postgres_server, pg_database):
    """Two brokers run a connector of the same name over identical topics into one database:
    both tasks stand at offset 0 when the records arrive, so whichever commits second writes
    from a position that is no longer stored. It must be fenced (and carry on from the stored
    position), not write the records a second time."""
    other = broker_factory(name="twin")
    topic = unique_topic("pg-fence")
    plain_table(postgres_server, pg_database, topic)
    config = insert_config(postgres_server, pg_database)
    config["topics"] = topic
    for b in (broker, other):
        create_topic(b.bootstrap, topic, partitions=2)
        create_connector(b, "fenced", config)
        wait_running(b, "fenced")
    rows = [(i, {"id": i, "n": i}) for i in range(4000)]
    for b in (broker, other):
        produce_to_partitions(b, topic, rows, partitions=2)
    # Each broker's task has caught up (its idle group commit carries its read position).
    for b in (broker, other):
        wait_until("the task to catch up", lambda b=b: committed_in_group(b, "connect-fenced", topic, 2) == [2000, 2000],
                   timeout_s=120)
    assert ids_once(postgres_server, pg_database, topic) == list(range(4000))
    assert stored_positions(postgres_server, pg_database, "fenced") == {(topic, 0): 2000, (topic, 1): 2000}
    logs = rest(broker, "GET", "/connectors/fenced/logs")[1] + rest(other, "GET", "/connectors/fenced/logs")[1]
    assert any("fenced" in line for line in logs), logs
    for b in (broker, other):
        assert_no_failed_tasks(b, "fenced")
