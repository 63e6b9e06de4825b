"""The PostgreSQL sink (and source) through the real binary, against a real PostgreSQL that the
tests start themselves (initdb + pg_ctl on a free port): exact rows, upsert and delete
semantics, exactly-once across a broker SIGKILL and a PostgreSQL restart, dead letters, and
pause/resume/restart through the Connect REST API.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time

import pytest
from confluent_kafka import Producer

from clients import consume_partitions, create_topic, flush_all, produce_or_wait, producer_config, unique_topic
from connect_support import (
    assert_no_failed_tasks,
    connector_status,
    create_connector,
    rest,
    wait_running,
    wait_until,
)


def produce_rows(broker, topic: str, rows: list[tuple[object, object]]) -> None:
    """rows: (key, value) pairs; dict/int keys and dict values are JSON-encoded, None stays null."""
    producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 20}))
    for key, value in rows:
        k = None if key is None else (json.dumps(key) if not isinstance(key, (bytes, str)) else key)
        v = None if value is None else (json.dumps(value) if isinstance(value, (dict, list)) else value)
        produce_or_wait(producer, topic, key=k, value=v)
    flush_all(producer)


def sink_config(pg, database: str, topic: str, **extra) -> dict:
    config = {
        "connector.class": "postgres-sink",
        "connection.url": pg.url_for(database),
        "topics": topic,
        "insert.mode": "upsert",
        "pk.mode": "record_key",
        "pk.fields": "id",
        "auto.create": "true",
        "auto.evolve": "true",
        "max.retries": "60",
        "retry.backoff.ms": "100",
    }
    config.update({k.replace("_", "."): str(v) for k, v in extra.items()})
    return config


def events(count: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"user": f"u{rng.randrange(100)}", "amount": rng.randrange(10_000), "score": rng.random(), "ok": i % 3 == 0,
         "tags": {"n": i % 7}}
        for i in range(count)
    ]


def table_rows(pg, database: str, table: str) -> dict[int, tuple]:
    rows = pg.rows(f'SELECT id, "user", amount, score, ok, tags::text FROM "{table}" ORDER BY id', database)
    return {int(r[0]): (r[1], int(r[2]), float(r[3]), r[4] == "t", json.loads(r[5])) for r in rows}


def expected_rows(values: list[dict]) -> dict[int, tuple]:
    return {i: (v["user"], v["amount"], v["score"], v["ok"], v["tags"]) for i, v in enumerate(values)}


def count(pg, database: str, table: str, where: str = "true") -> int:
    try:
        return int(pg.scalar(f'SELECT count(*) FROM "{table}" WHERE {where}', database))
    except AssertionError:
        return 0  # not created yet


def test_100k_records_land_as_exactly_these_rows(runnel_bin, broker, postgres_server, pg_database):
    topic = unique_topic("pg-100k")
    create_topic(broker.bootstrap, topic, partitions=4)
    values = events(100_000)
    produce_rows(broker, topic, [({"id": i}, v) for i, v in enumerate(values)])
    create_connector(broker, "pg100k", sink_config(postgres_server, pg_database, topic, tasks_max=2, batch_size=5000))
    wait_until("100k rows", lambda: count(postgres_server, pg_database, topic) == 100_000, timeout_s=180)
    assert table_rows(postgres_server, pg_database, topic) == expected_rows(values)
    # Types inferred from the JSON values.
    types = dict(postgres_server.rows(
        f"SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{topic}'", pg_database))
    assert types == {"id": "bigint", "user": "text", "amount": "bigint", "score": "double precision",
                     "ok": "boolean", "tags": "jsonb"}
    # The positions committed with the rows, and the group shows no lag.
    committed = postgres_server.scalar(
        "SELECT sum(next_offset) FROM runnel_connect_offsets WHERE connector = 'pg100k'", pg_database)
    assert int(committed) == 100_000
    status = connector_status(broker, "pg100k")
    assert [t["state"] for t in status["tasks"]] == ["RUNNING", "RUNNING"]
    assert sum(t["records"] for t in status["tasks"]) == 100_000

    def group_lags():
        env = {"RUNNEL_BROKERS": broker.bootstrap, "RUNNEL_ADMIN": broker.admin_url, "PATH": "/usr/bin:/bin"}
        out = subprocess.run([str(runnel_bin), "group", "describe", "connect-pg100k"], capture_output=True,
                             text=True, timeout=30, env=env).stdout
        rows = [line.split() for line in out.splitlines() if line.startswith(topic)]
        return rows if len(rows) == 4 and all(r[4] == "0" for r in rows) else None

    # The positions also show under the consumer group connect-<name>, with no lag left.
    wait_until("group lag 0", group_lags)


def test_upserts_deletes_and_evolution(broker, postgres_server, pg_database):
    topic = unique_topic("pg-upsert")
    create_topic(broker.bootstrap, topic, partitions=1)
    create_connector(broker, "pgups", sink_config(postgres_server, pg_database, topic, delete_enabled="true"))
    produce_rows(broker, topic, [
        ({"id": 1}, {"name": "a", "n": 1}),
        ({"id": 2}, {"name": "b", "n": 2}),
        ({"id": 1}, {"name": "a2", "n": 10}),       # upsert replaces
        ({"id": 2}, None),                          # tombstone deletes
        ({"id": 3}, {"name": "c", "n": 3}),
        ({"id": 3}, None),
        ({"id": 3}, {"name": "c2", "n": 30}),       # re-created after its delete, same batch
        ({"id": 4}, {"name": "d", "n": 4, "extra": True}),  # a new field: auto.evolve adds a column
    ])
    def settled():
        rows = postgres_server.rows(f'SELECT id, name, n, extra FROM "{topic}" ORDER BY id', pg_database)
        return rows if rows == [["1", "a2", "10", ""], ["3", "c2", "30", ""], ["4", "d", "4", "t"]] else None
    wait_until("upserted rows", settled)
    # Later batches: a delete of a key that exists, an upsert, in separate transactions.
    produce_rows(broker, topic, [({"id": 1}, None), ({"id": 4}, {"name": "d2", "n": 40})])
    wait_until("second batch", lambda: postgres_server.rows(
        f'SELECT id, name, n, extra FROM "{topic}" ORDER BY id', pg_database) == [["3", "c2", "30", ""], ["4", "d2", "40", ""]])
    assert_no_failed_tasks(broker, "pgups")


def produce_in_background(broker, topic: str, rows: list, chunks: int = 10) -> threading.Thread:
    def run():
        size = len(rows) // chunks + 1
        for start in range(0, len(rows), size):
            produce_rows(broker, topic, rows[start:start + size])
            time.sleep(0.2)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_broker_sigkill_mid_stream_is_exactly_once(broker, postgres_server, pg_database):
    topic = unique_topic("pg-kill")
    create_topic(broker.bootstrap, topic, partitions=3)
    values = events(60_000, seed=2)
    produce_rows(broker, topic, [({"id": i}, v) for i, v in enumerate(values)])
    # Insert mode: a row written twice would fail on the primary key, and a lost one is missing.
    config = sink_config(postgres_server, pg_database, topic, insert_mode="insert", batch_size=500, tasks_max=3)
    create_connector(broker, "pgkill", config)
    wait_until("rows to start landing", lambda: count(postgres_server, pg_database, topic) > 10_000, interval_s=0.05)
    broker.kill()
    in_flight = count(postgres_server, pg_database, topic)
    assert in_flight < 60_000, "the kill came after everything landed: nothing was tested"
    broker.start()
    wait_until("all rows", lambda: count(postgres_server, pg_database, topic) == 60_000, timeout_s=180)
    assert table_rows(postgres_server, pg_database, topic) == expected_rows(values)
    assert_no_failed_tasks(broker, "pgkill")


@pytest.mark.slow
def test_postgres_restart_mid_stream_loses_and_duplicates_nothing(broker, postgres_server, pg_database):
    topic = unique_topic("pg-restart")
    create_topic(broker.bootstrap, topic, partitions=2)
    values = events(40_000, seed=3)
    rows = [({"id": i}, v) for i, v in enumerate(values)]
    config = sink_config(postgres_server, pg_database, topic, insert_mode="insert", batch_size=300, tasks_max=2)
    create_connector(broker, "pgrestart", config)
    producer = produce_in_background(broker, topic, rows)
    wait_until("rows to start landing", lambda: count(postgres_server, pg_database, topic) > 3000, interval_s=0.05)
    postgres_server.stop("immediate")  # a crash: in-flight transactions are lost, not finished
    time.sleep(2)
    postgres_server.start()
    producer.join(timeout=120)
    wait_until("all rows", lambda: count(postgres_server, pg_database, topic) == 40_000, timeout_s=180)
    assert table_rows(postgres_server, pg_database, topic) == expected_rows(values)
    assert_no_failed_tasks(broker, "pgrestart")
    logs = rest(broker, "GET", "/connectors/pgrestart/logs")[1]
    assert any("retrying" in line for line in logs), "the outage was never noticed"


@pytest.mark.parametrize("mode", ["upsert", "insert"])
def test_bad_records_go_to_the_dead_letter_topic(broker, postgres_server, pg_database, mode):
    topic = unique_topic("pg-dlq")
    dlq = unique_topic("pg-dlq-dead")
    create_topic(broker.bootstrap, topic, partitions=1)
    postgres_server.psql("CREATE TABLE parent (id bigint PRIMARY KEY); INSERT INTO parent VALUES (1)", pg_database)
    postgres_server.psql(f'CREATE TABLE "{topic}" (id bigint PRIMARY KEY, n bigint NOT NULL CHECK (n >= 0), '
                         f'note text, parent bigint REFERENCES parent (id))', pg_database)
    good = [({"id": i}, {"n": i, "note": f"ok {i}", "parent": 1}) for i in range(200)]
    bad = [
        # Found before COPY:
        ({"id": 1000}, "not json at all"),
        ({"id": 1001}, [1, 2, 3]),
        ({"id": 1002}, {"n": "forty-two"}),   # not an integer
        ({"id": 1003}, {"note": "no n"}),     # NOT NULL
        (None, {"n": 5}),                      # no key for pk.mode=record_key
        # Refused by PostgreSQL, which names the COPY line:
        ({"id": 1005}, {"n": "12abc"}),       # digits, yet no integer
        ({"id": 1006}, {"n": -1}),            # CHECK constraint
        # Refused by PostgreSQL with no line (checked at the end of the statement): found row by row.
        ({"id": 1007}, {"n": 7, "parent": 99}),  # foreign key
    ]
    mixed = good[:50] + bad[:2] + good[50:120] + bad[2:5] + good[120:150] + bad[5:] + good[150:]
    config = sink_config(postgres_server, pg_database, topic, auto_create="false", auto_evolve="false",
                         insert_mode=mode, **{"errors.tolerance": "all", "errors.deadletterqueue.topic.name": dlq})
    create_connector(broker, "pgdlq", config)
    produce_rows(broker, topic, mixed)
    wait_until("good rows", lambda: count(postgres_server, pg_database, topic) == 200)
    rows = postgres_server.rows(f'SELECT id, n, note FROM "{topic}" ORDER BY id', pg_database)
    assert rows == [[str(i), str(i), f"ok {i}"] for i in range(200)]
    dead = wait_until("dead letters", lambda: (d := consume_partitions(broker.bootstrap, dlq, [0])[0])
                      and len(d) >= len(bad) and d)
    assert len(dead) == len(bad)
    headers = [dict(r.headers) for r in dead]
    assert sorted(int(h["__connect.errors.offset"]) for h in headers) == [50, 51, 122, 123, 124, 155, 156, 157]
    assert all(h["__connect.errors.topic"].decode() == topic for h in headers)
    messages = {int(h["__connect.errors.offset"]): h["__connect.errors.exception.message"].decode() for h in headers}
    assert "not JSON" in messages[50] and "22P02" in messages[122], messages
    assert "23502" in messages[123] and "no key" in messages[124], messages
    assert "22P02" in messages[155] and "23514" in messages[156] and "23503" in messages[157], messages
    status = connector_status(broker, "pgdlq")
    assert status["tasks"][0]["state"] == "RUNNING" and status["tasks"][0]["failed"] == len(bad)


def test_errors_tolerance_none_fails_the_task_with_the_error(broker, postgres_server, pg_database):
    topic = unique_topic("pg-fail")
    create_topic(broker.bootstrap, topic, partitions=1)
    create_connector(broker, "pgfail", sink_config(postgres_server, pg_database, topic))
    produce_rows(broker, topic, [({"id": 1}, {"n": 1}), ({"id": 2}, "oops"), ({"id": 3}, {"n": 3})])
    status = wait_until("FAILED", lambda: (s := connector_status(broker, "pgfail"))["tasks"][0]["state"] == "FAILED" and s)
    assert "not JSON" in status["tasks"][0]["trace"]
    assert status["connector"]["state"] == "FAILED"
    # Nothing at or after the failing record is committed; a restart fails again at it.
    assert count(postgres_server, pg_database, topic, "id >= 2") == 0
    code, body = rest(broker, "POST", "/connectors/pgfail/restart?includeTasks=true&onlyFailed=true")
    assert code == 202, body
    wait_until("FAILED again", lambda: connector_status(broker, "pgfail")["tasks"][0]["state"] == "FAILED")


def test_pause_resume_restart_and_delete_through_rest(broker, postgres_server, pg_database):
    topic = unique_topic("pg-rest")
    create_topic(broker.bootstrap, topic, partitions=2)
    create_connector(broker, "pgrest", sink_config(postgres_server, pg_database, topic, tasks_max=2))
    wait_running(broker, "pgrest")
    produce_rows(broker, topic, [({"id": i}, {"n": i}) for i in range(100)])
    wait_until("first rows", lambda: count(postgres_server, pg_database, topic) == 100)

    code, _ = rest(broker, "PUT", "/connectors/pgrest/pause")
    assert code == 202
    wait_until("PAUSED", lambda: connector_status(broker, "pgrest")["connector"]["state"] == "PAUSED"
               and all(t["state"] == "PAUSED" for t in connector_status(broker, "pgrest")["tasks"]))
    produce_rows(broker, topic, [({"id": i}, {"n": i}) for i in range(100, 200)])
    time.sleep(2)
    assert count(postgres_server, pg_database, topic) == 100, "a paused connector wrote rows"

    # Paused survives a broker restart (the target state is stored).
    broker.restart()
    assert connector_status(broker, "pgrest")["connector"]["state"] == "PAUSED"
    time.sleep(1)
    assert count(postgres_server, pg_database, topic) == 100

    code, _ = rest(broker, "PUT", "/connectors/pgrest/resume")
    assert code == 202
    wait_until("rows after resume", lambda: count(postgres_server, pg_database, topic) == 200)

    code, status = rest(broker, "POST", "/connectors/pgrest/restart?includeTasks=true")
    assert code == 202 and len(status["tasks"]) == 2, status
    wait_running(broker, "pgrest")
    code, tasks = rest(broker, "GET", "/connectors/pgrest/tasks")
    assert code == 200 and [t["id"]["task"] for t in tasks] == [0, 1]
    code, info = rest(broker, "GET", "/connectors/pgrest")
    assert code == 200 and info["type"] == "sink" and info["config"]["topics"] == topic
    code, names = rest(broker, "GET", "/connectors")
    assert names == ["pgrest"]
    # A config change restarts the tasks with it.
    config = sink_config(postgres_server, pg_database, topic, tasks_max=1)
    code, info = rest(broker, "PUT", "/connectors/pgrest/config", config)
    assert code == 200 and len(info["tasks"]) == 1, info
    produce_rows(broker, topic, [({"id": 500}, {"n": 500})])
    wait_until("row after reconfigure", lambda: count(postgres_server, pg_database, topic) == 201)

    code, _ = rest(broker, "DELETE", "/connectors/pgrest")
    assert code == 204
    assert rest(broker, "GET", "/connectors/pgrest/status")[0] == 404
    assert rest(broker, "GET", "/connectors")[1] == []


def test_bad_configs_are_refused_with_400(broker, postgres_server, pg_database):
    topic = unique_topic("pg-bad")
    create_topic(broker.bootstrap, topic, partitions=1)
    good = sink_config(postgres_server, pg_database, topic)
    for broken, fragment in [
        ({"connector.class": "nope"}, "not known"),
        ({"insert.mode": "merge"}, "insert.mode"),
        ({"pk.mode": "none"}, "upsert needs pk.mode"),
        ({"topics": "no-such-topic"}, "does not exist"),
        ({"tasks.max": "0"}, "tasks.max"),
        ({"connection.url": "postgresql://[oops"}, "connection.url"),
        ({"wasm.module": "/nonexistent.wasm"}, "wasm.module"),
    ]:
        code, body = rest(broker, "POST", "/connectors", {"name": "bad", "config": {**good, **broken}})
        assert code == 400 and fragment in body["message"], (broken, code, body)
    create_connector(broker, "dup", good)
    code, body = rest(broker, "POST", "/connectors", {"name": "dup", "config": good})
    assert code == 409, body
    assert rest(broker, "GET", "/connectors/missing")[0] == 404
    assert rest(broker, "POST", "/connectors", {"config": good})[0] == 400
    assert rest(broker, "GET", "/connectors")[1] == ["dup"]


def test_postgres_source_resumes_without_loss_or_duplicates(broker, postgres_server, pg_database):
    postgres_server.psql("CREATE TABLE orders (id bigserial PRIMARY KEY, item text, qty int)", pg_database)
    postgres_server.psql("INSERT INTO orders (item, qty) SELECT 'item' || g, g FROM generate_series(1, 3000) g", pg_database)
    topic = unique_topic("pg-src")
    create_topic(broker.bootstrap, topic, partitions=3)
    create_connector(broker, "pgsrc", {
        "connector.class": "postgres-source",
        "connection.url": postgres_server.url_for(pg_database),
        "table": "orders", "mode": "incrementing", "incrementing.column.name": "id",
        "topic": topic, "poll.interval.ms": "100", "batch.max.rows": "500",
    })

    def total():
        from clients import watermarks
        return sum(watermarks(broker.bootstrap, topic, p)[1] for p in range(3))

    wait_until("first rows", lambda: total() >= 1000, interval_s=0.05)
    broker.kill()
    postgres_server.psql("INSERT INTO orders (item, qty) SELECT 'late' || g, g FROM generate_series(1, 2000) g", pg_database)
    broker.start()
    wait_until("all 5000 rows", lambda: total() == 5000, timeout_s=120)
    time.sleep(1)
    records = consume_partitions(broker.bootstrap, topic, range(3))
    ids = sorted(json.loads(r.value)["id"] for p in records.values() for r in p)
    assert ids == list(range(1, 5001))
    keyed = [r for p in records.values() for r in p]
    assert all(r.key.decode() == str(json.loads(r.value)["id"]) for r in keyed)


def test_a_wasm_module_maps_records_to_rows(broker, postgres_server, pg_database):
    import pathlib

    module = pathlib.Path(__file__).resolve().parents[2] / "plugins" / "dist" / "json-project.wasm"
    if not module.exists():
        pytest.fail(f"{module} is missing: run plugins/build.sh (tests/run.sh does)")
    topic = unique_topic("pg-wasm")
    create_topic(broker.bootstrap, topic, partitions=1)
    config = sink_config(postgres_server, pg_database, topic, delete_enabled="true",
                         **{"wasm.module": str(module), "wasm.env.FIELDS": "user:name,amount"})
    create_connector(broker, "pgwasm", config)
    values = events(500, seed=4)
    produce_rows(broker, topic, [({"id": i}, v) for i, v in enumerate(values)] + [({"id": 0}, None)])
    wait_until("499 rows", lambda: count(postgres_server, pg_database, topic) == 499
               and count(postgres_server, pg_database, topic, "id = 499") == 1)
    rows = postgres_server.rows(f'SELECT id, name, amount FROM "{topic}" ORDER BY id', pg_database)
    assert rows == [[str(i), v["user"], str(v["amount"])] for i, v in enumerate(values) if i > 0]
    columns = postgres_server.rows(
        f"SELECT column_name FROM information_schema.columns WHERE table_name = '{topic}' ORDER BY 1", pg_database)
    assert columns == [["amount"], ["id"], ["name"]], "the module dropped the other fields"
