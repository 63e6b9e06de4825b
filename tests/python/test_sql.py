"""SQL over topics through the real binary: `runnel sql` and `POST /v1/sql` answers compared with
references computed here from the same generated records; pruning by the time index; limits and
errors; materialized views with out-of-order and late events, exact across a SIGKILL.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
import urllib.error
import urllib.request
from collections import defaultdict

from confluent_kafka import Producer

from clients import (
    consume_partitions,
    create_topic,
    flush_all,
    produce_or_wait,
    producer_config,
    unique_topic,
    wait_until,
)



def sql_http(broker, statement: str, expect_status: int = 200, **options) -> tuple[int, dict, dict]:
    """POST /v1/sql; returns (status, body as JSON, headers)."""
    body = json.dumps({"sql": statement, **options}).encode()
    request = urllib.request.Request(f"{broker.admin_url}/v1/sql", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), e.headers
    headers = {k.lower(): v for k, v in headers.items()}
    assert status == expect_status, f"{statement}: HTTP {status}: {raw[:500]!r}"
    if headers.get("content-type", "").startswith("application/json"):
        return status, json.loads(raw), headers
    return status, {"raw": raw}, headers


def rows(broker, statement: str, **options) -> list[dict]:
    return sql_http(broker, statement, **options)[1]["rows"]


def runnel_sql(runnel_bin, broker, *args, check=True):
    env = {"RUNNEL_BROKERS": broker.bootstrap, "RUNNEL_ADMIN": broker.admin_url, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(runnel_bin), "sql", *args], capture_output=True, text=True, timeout=120, env=env)
    if check:
        assert result.returncode == 0, f"runnel sql {args} failed: {result.stderr}"
    return result



def produce(broker, topic: str, records: list[tuple[int, bytes | None, bytes]], partition: int | None = None):
    """(timestamp ms, key, value) in order, acks=all."""
    producer = Producer(producer_config(broker.bootstrap, acks="all", **{"linger.ms": 5}))
    for ts, key, value in records:
        extra = {} if partition is None else {"partition": partition}
        produce_or_wait(producer, topic, key=key, value=value, timestamp=ts, **extra)
    flush_all(producer)


def clicks(count: int, seed: int, start_ms: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"user": f"u{rng.randrange(12)}", "amount": rng.randrange(1000), "page": f"/p{rng.randrange(6)}",
         "ts": start_ms + i * 50 + rng.randrange(-4000, 1000)}
        for i in range(count)
    ]


def test_ad_hoc_group_by_matches_a_reference_in_every_format(broker, runnel_bin):
    topic = unique_topic("clicks")
    create_topic(broker.bootstrap, topic, partitions=3)
    events = clicks(6000, seed=11, start_ms=1_700_000_000_000)
    records = [(e["ts"], e["user"].encode(), json.dumps(e).encode()) for e in events]
    records += [(1_700_000_000_000, b"bad", b"{not json"), (1_700_000_000_001, b"bad", b"[1,2]")]
    produce(broker, topic, records)
    reference = defaultdict(lambda: [0, 0, set()])
    for e in events:
        r = reference[e["user"]]
        r[0] += 1
        r[1] += e["amount"]
        r[2].add(e["page"])
    statement = (
        f'SELECT "user", COUNT(*) AS n, SUM(amount) AS total, COUNT(DISTINCT page) AS pages FROM "{topic}" '
        'WHERE "user" IS NOT NULL GROUP BY "user" ORDER BY "user"'
    )
    expected = [{"user": u, "n": r[0], "total": r[1], "pages": len(r[2])} for u, r in sorted(reference.items())]

    status, body, _ = sql_http(broker, statement)
    assert body["rows"] == expected
    assert body["stats"]["malformed_rows"] == 2
    assert body["stats"]["rows_read"] == len(records)
    assert [c["name"] for c in body["columns"]] == ["user", "n", "total", "pages"]

    # The CLI: JSON, CSV and the default table, with the statistics line on stderr.
    out = runnel_sql(runnel_bin, broker, "--format", "json", statement)
    assert json.loads(out.stdout)["rows"] == expected
    assert "2 malformed" in out.stderr
    out = runnel_sql(runnel_bin, broker, "--format", "csv", statement)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "user,n,total,pages"
    assert lines[1:] == [f'{r["user"]},{r["n"]},{r["total"]},{r["pages"]}' for r in expected]
    out = runnel_sql(runnel_bin, broker, statement)
    assert "| user" in out.stdout and expected[0]["user"] in out.stdout
    assert "2 malformed" in out.stderr
    # An empty answer still names its columns.
    out = runnel_sql(runnel_bin, broker, f'SELECT "user", amount FROM "{topic}" WHERE amount < 0')
    assert "| user | amount |" in out.stdout, out.stdout

    # Window functions and joins: top page per user, as a reference would rank them.
    top = rows(
        broker,
        f'SELECT "user", page, c FROM (SELECT "user", page, COUNT(*) AS c, ROW_NUMBER() OVER '
        f'(PARTITION BY "user" ORDER BY COUNT(*) DESC, page) AS r FROM "{topic}" WHERE page IS NOT NULL '
        'GROUP BY "user", page) WHERE r = 1 ORDER BY "user"',
    )
    per_page = defaultdict(int)
    for e in events:
        per_page[(e["user"], e["page"])] += 1
    expected_top = []
    for user in sorted(reference):
        best = sorted(((-c, p) for (u, p), c in per_page.items() if u == user))[0]
        expected_top.append({"user": user, "page": best[1], "c": -best[0]})
    assert top == expected_top

    # Arrow IPC on request.
    request = urllib.request.Request(
        f"{broker.admin_url}/v1/sql",
        data=json.dumps({"sql": f'SELECT COUNT(*) FROM "{topic}"'}).encode(),
        headers={"Accept": "application/vnd.apache.arrow.stream"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"] == "application/vnd.apache.arrow.stream"
        payload = response.read()
    assert payload[:4] == b"\xff\xff\xff\xff", "an Arrow IPC stream starts with a continuation marker"


def test_a_query_over_the_last_minute_reads_only_its_segments(broker):
    topic = unique_topic("history")
    create_topic(broker.bootstrap, topic, partitions=1, config={"segment.bytes": "8192"})
    now_ms = int(time.time() * 1000)
    producer = Producer(producer_config(broker.bootstrap, acks="all"))
    for minute in range(60, 0, -1):  # an hour of data, oldest first, 100 records a minute
        for i in range(100):
            ts = now_ms - minute * 60_000 + i * 10
            produce_or_wait(producer, topic, value=json.dumps({"minute": minute, "i": i}).encode(), timestamp=ts)
        flush_all(producer)  # one batch a minute: several segments an hour
    total = rows(broker, f'SELECT COUNT(*) AS n FROM "{topic}"')[0]["n"]
    assert total == 6000
    statement = f"SELECT COUNT(*) AS n, MIN(minute) AS lo FROM \"{topic}\" WHERE timestamp >= now() - INTERVAL '90' SECOND"
    _, body, _ = sql_http(broker, statement)
    assert body["rows"] == [{"n": 100, "lo": 1}]
    stats = body["stats"]
    assert stats["segments_total"] >= 20, stats
    assert stats["segments_skipped"] >= stats["segments_total"] - 3, stats
    assert stats["rows_read"] < 400, stats
    explain = rows(broker, "EXPLAIN " + statement)
    plan = "\n".join(str(r) for r in explain)
    assert "TopicScanExec" in plan and "segments)" in plan, plan


def test_errors_are_clear_and_limits_hold(broker, runnel_bin):
    topic = unique_topic("small")
    create_topic(broker.bootstrap, topic, partitions=1)
    produce(broker, topic, [(1, None, json.dumps({"k": i % 500, "v": i}).encode()) for i in range(20000)])
    _, body, _ = sql_http(broker, "SELEC 1", expect_status=400)
    assert body["kind"] == "plan"
    _, body, _ = sql_http(broker, 'SELECT * FROM "no-such-topic"', expect_status=404)
    assert "no-such-topic" in body["error"]
    _, body, _ = sql_http(broker, f'DELETE FROM "{topic}"', expect_status=400)
    # 4·10⁸ casts and concatenations (seconds); `a.v + b.v < 0` took about the 300 ms limit idle.
    slow = (f'SELECT COUNT(*) AS n FROM "{topic}" a, "{topic}" b '
            "WHERE CAST(a.v AS VARCHAR) || CAST(b.v AS VARCHAR) = 'never'")
    _, body, _ = sql_http(broker, slow, expect_status=408, timeout_ms=300)
    assert body["kind"] == "timeout"
    # Grouping by the whole value (20,000 distinct strings) needs several MiB of hash table; by
    # the integer `v` alone it stays near 1 MiB, where DataFusion's pool (which accounts what the
    # operators reserve, after each batch) let it through now and then.
    hungry = f'SELECT value, COUNT(*) FROM "{topic}" GROUP BY value ORDER BY value'
    _, body, _ = sql_http(broker, hungry, expect_status=503, memory_bytes=256 << 10)
    assert body["kind"] == "resources_exhausted"
    _, body, _ = sql_http(broker, f'SELECT v FROM "{topic}"', max_rows=5)
    assert len(body["rows"]) == 5 and body["truncated"] is True
    out = runnel_sql(runnel_bin, broker, "SELECT nope FROM nowhere", check=False)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error:"), out.stderr
    # The broker is fine afterwards.
    assert rows(broker, f'SELECT COUNT(*) AS n FROM "{topic}"') == [{"n": 20000}]


def reference_windows(events, size_ms, lateness_ms):
    """Per (window start, user): count, sum, distinct pages; and the late events. Rows are
    applied in order; the watermark is the largest time seen minus the lateness."""
    groups = defaultdict(lambda: [0, 0, set()])
    late = []
    max_seen = None
    for e in events:
        ts = e["ts"]
        max_seen = ts if max_seen is None else max(max_seen, ts)
        start = ts // size_ms * size_ms
        if start + size_ms <= max_seen - lateness_ms:
            late.append(e)
            continue
        g = groups[(start, e["user"])]
        g[0] += 1
        g[1] += e["amount"]
        g[2].add(e["page"])
    return groups, late


def test_windowed_view_is_exact_across_a_sigkill(broker_factory):
    broker = broker_factory()
    topic = unique_topic("clicks")
    view = unique_topic("per_user").replace("-", "_")
    create_topic(broker.bootstrap, topic, partitions=1)
    # Recent times: the topics' retention (7 days by default) must not expire the data.
    start_ms = int(time.time() * 1000) - 3_600_000
    events = clicks(30000, seed=5, start_ms=start_ms)
    # One event far ahead closes every window at the end.
    events.append({"user": "closer", "amount": 0, "page": "/end", "ts": start_ms + 10_000_000})
    to_record = lambda e: (e["ts"], e["user"].encode(), json.dumps(e).encode())  # noqa: E731
    first, second = events[:15000], events[15000:]
    produce(broker, topic, [to_record(e) for e in first], partition=0)
    sql_http(
        broker,
        f"CREATE MATERIALIZED VIEW {view} WITH (emit = 'final', lateness = '2 seconds') AS "
        f'SELECT "user", COUNT(*) AS n, SUM(amount) AS total, COUNT(DISTINCT page) AS pages '
        f'FROM "{topic}" GROUP BY "user", TUMBLE(to_timestamp_millis(ts), INTERVAL \'10\' SECOND)',
    )
    wait_until("the view to start processing", lambda: show(broker, view)["processed"] > 0)
    broker.kill()
    broker.start()
    produce(broker, topic, [to_record(e) for e in second], partition=0)
    groups, late = reference_windows(events, 10_000, 2_000)
    closed = {k: v for k, v in groups.items() if k[0] + 10_000 <= events[-1]["ts"] - 2_000}
    wait_until("the view to catch up", lambda: show(broker, view)["lag"] == 0 and show(broker, view)["processed"] == len(events))

    # Exactly one row per closed window and user in the output topic: nothing doubled or lost.
    output = consume_partitions(broker.bootstrap, view, [0])[0]
    keys = [json.loads(r.key) for r in output]
    assert len(keys) == len(set(json.dumps(k, sort_keys=True) for k in keys)), "a window was emitted twice"
    found = {}
    for r in output:
        key, value = json.loads(r.key), json.loads(r.value)
        found[(key["window_start"], key["user"])] = (value["n"], value["total"], value["pages"])
    assert found == {k: (v[0], v[1], len(v[2])) for k, v in closed.items()}
    # Late events went to <view>.late, as they were.
    late_records = consume_partitions(broker.bootstrap, f"{view}.late", [0])[0]
    assert sorted(json.loads(r.value)["ts"] for r in late_records) == sorted(e["ts"] for e in late)
    assert len(late) > 0, "the generated data has late events"
    assert all(dict(r.headers or [])["runnel.late.reason"] == b"late" for r in late_records)
    assert show(broker, view)["late"] == len(late)

    # SELECT from the view, and top-N per window as a query over it.
    from_view = rows(broker, f"SELECT COUNT(*) AS c, SUM(n) AS s FROM {view}")
    assert from_view == [{"c": len(closed), "s": sum(v[0] for v in closed.values())}]
    top = rows(
        broker,
        f"SELECT CAST(window_start AS BIGINT) AS w, \"user\", n FROM (SELECT window_start, \"user\", n, "
        f"ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY n DESC, \"user\") AS r FROM {view}) "
        "WHERE r = 1 ORDER BY w",
    )
    best = {}
    for (w, user), v in closed.items():
        if w not in best or (-v[0], user) < (-best[w][1], best[w][0]):
            best[w] = (user, v[0])
    assert top == [{"w": w, "user": u, "n": n} for w, (u, n) in sorted(best.items())]

    sql_http(broker, f"DROP MATERIALIZED VIEW {view}")
    assert all(r["name"] != view for r in rows(broker, "SHOW MATERIALIZED VIEWS"))


def show(broker, view: str) -> dict:
    for row in rows(broker, "SHOW MATERIALIZED VIEWS"):
        if row["name"] == view:
            assert not row["status"].startswith("FAILED"), row
            return row
    raise AssertionError(f"view {view} not listed")


def test_update_mode_session_view_survives_a_restart(broker_factory):
    broker = broker_factory()
    topic = unique_topic("sessions")
    view = unique_topic("visits").replace("-", "_")
    create_topic(broker.bootstrap, topic, partitions=2)
    rng = random.Random(3)
    events = []
    t = int(time.time() * 1000) - 86_400_000
    for _ in range(3000):
        t += rng.choice([100, 200, 5000, 40_000])
        events.append({"user": f"u{rng.randrange(5)}", "ts": t})
    half = len(events) // 2
    produce(broker, topic, [(e["ts"], e["user"].encode(), json.dumps(e).encode()) for e in events[:half]])
    # Created after the first records: the view infers the topic's columns from them.
    sql_http(
        broker,
        f"CREATE MATERIALIZED VIEW {view} WITH (emit = 'update', lateness = '30 days') AS "
        f'SELECT "user", COUNT(*) AS n FROM "{topic}" GROUP BY "user", SESSION(timestamp, INTERVAL \'30\' SECOND)',
    )
    wait_until("half the events", lambda: show(broker, view)["processed"] == half)
    broker.restart()
    produce(broker, topic, [(e["ts"], e["user"].encode(), json.dumps(e).encode()) for e in events[half:]])
    wait_until("every event", lambda: show(broker, view)["processed"] == len(events))
    # Reference sessions per user: a gap of 30 s or more starts a new one.
    sessions = defaultdict(list)
    last = {}
    for e in sorted(events, key=lambda e: e["ts"]):
        u = e["user"]
        if u in last and e["ts"] - last[u] < 30_000:
            sessions[u][-1] += 1
        else:
            sessions[u].append(1)
        last[u] = e["ts"]
    expected = sorted((u, n) for u, counts in sessions.items() for n in counts)
    found = sorted((r["user"], r["n"]) for r in rows(broker, f'SELECT "user", n FROM {view}', max_rows=100000))
    assert found == expected
