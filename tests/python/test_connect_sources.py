"""Sources and the file sink through the real binary: each source resumes after a broker
SIGKILL without losing or duplicating a record; the HTTP source pushes back when its queue is
full; the JSON-lines file sink is exactly-once; the CLI; a WASM module shaping records.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from clients import consume_partitions, create_topic, unique_topic, watermarks
from connect_support import assert_no_failed_tasks, connector_status, create_connector, rest, wait_running, wait_until
from runnel_harness import free_ports

REPO = pathlib.Path(__file__).resolve().parents[2]


def total(broker, topic: str, partitions: int) -> int:
    return sum(watermarks(broker.bootstrap, topic, p)[1] for p in range(partitions))


def all_values(broker, topic: str, partitions: int) -> list[bytes]:
    records = consume_partitions(broker.bootstrap, topic, range(partitions))
    return [r.value for p in range(partitions) for r in records[p]]


def test_file_source_resumes_at_its_byte_position(broker, tmp_path):
    path = tmp_path / "input.log"
    path.write_text("".join(f"line {i}\n" for i in range(5000)))
    topic = unique_topic("file-src")
    create_topic(broker.bootstrap, topic, partitions=2)
    create_connector(broker, "tail", {"connector.class": "file-source", "file": str(path), "topic": topic,
                                      "poll.interval.ms": "50", "poll.records.max": "500"})
    wait_until("first lines", lambda: total(broker, topic, 2) >= 1000, interval_s=0.02)
    broker.kill()
    with path.open("a") as f:
        f.write("".join(f"line {i}\n" for i in range(5000, 8000)))
        f.write("partial")  # no newline yet: not a record
    broker.start()
    wait_until("8000 lines", lambda: total(broker, topic, 2) == 8000, timeout_s=60)
    with path.open("a") as f:
        f.write(" end\r\n")
    wait_until("the completed line", lambda: total(broker, topic, 2) == 8001)
    values = sorted(all_values(broker, topic, 2), key=lambda v: (len(v), v))
    expected = sorted([f"line {i}".encode() for i in range(8000)] + [b"partial end"], key=lambda v: (len(v), v))
    assert values == expected
    assert_no_failed_tasks(broker, "tail")


def test_datagen_resumes_its_sequence_after_a_crash(broker):
    topic = unique_topic("datagen")
    create_topic(broker.bootstrap, topic, partitions=3)
    create_connector(broker, "gen", {"connector.class": "datagen-source", "topic": topic, "max.records": "20000",
                                     "records.per.second": "4000", "poll.records.max": "200", "seed": "7"})
    wait_until("some events", lambda: total(broker, topic, 3) >= 3000, interval_s=0.02)
    before_kill = total(broker, topic, 3)
    broker.kill()
    # At 4000 events/s the kill comes well before the last of them.
    assert before_kill < 16000, "the kill came too late: nothing was tested"
    broker.start()
    wait_until("20000 events", lambda: total(broker, topic, 3) == 20000, timeout_s=60)
    time.sleep(0.5)
    assert total(broker, topic, 3) == 20000, "datagen went past max.records"
    records = consume_partitions(broker.bootstrap, topic, range(3))
    events = [json.loads(r.value) for p in range(3) for r in records[p]]
    assert sorted(e["id"] for e in events) == list(range(20000))
    assert all({"user", "action", "page", "ts"} <= set(e) for e in events)
    assert all(r.key.decode() == json.loads(r.value)["user"] for p in range(3) for r in records[p])


def post(url: str, body: bytes, timeout_s: float = 30.0) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_http_source_acknowledges_durable_records_and_pushes_back(broker):
    topic = unique_topic("http-src")
    create_topic(broker.bootstrap, topic, partitions=1)
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}/records"
    create_connector(broker, "ingest", {"connector.class": "http-source", "http.listen": f"127.0.0.1:{port}",
                                        "topic": topic, "http.queue.max": "2"})
    wait_running(broker, "ingest")
    wait_until("the listener", lambda: _reachable(url))
    code, body = post(url, json.dumps([{"n": i} for i in range(100)]).encode())
    assert (code, body) == (200, {"records": 100})
    assert total(broker, topic, 1) == 100, "answered before the records were written"
    code, body = post(url + "?key=k1", b"plain body")
    assert (code, body) == (200, {"records": 1})

    # Paused: requests queue up; past http.queue.max they are refused with 429.
    assert rest(broker, "PUT", "/connectors/ingest/pause")[0] == 202
    wait_until("PAUSED", lambda: connector_status(broker, "ingest")["tasks"][0]["state"] == "PAUSED")
    answers: list[int] = []
    threads = [threading.Thread(target=lambda i=i: answers.append(post(url, json.dumps({"w": i}).encode(), 60)[0]))
               for i in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    wait_until("429s", lambda: answers.count(429) >= 3, timeout_s=10)
    assert total(broker, topic, 1) == 101
    assert rest(broker, "PUT", "/connectors/ingest/resume")[0] == 202
    for t in threads:
        t.join(timeout=30)
    assert sorted(answers) == [200] * answers.count(200) + [429] * answers.count(429)
    accepted = answers.count(200)
    assert accepted >= 1
    assert total(broker, topic, 1) == 101 + accepted

    broker.kill()
    broker.start()
    wait_until("the listener again", lambda: _reachable(url))
    assert post(url, b'[{"after": "restart"}]')[0] == 200
    values = all_values(broker, topic, 1)
    assert len(values) == 102 + accepted
    assert values[:100] == [json.dumps({"n": i}, separators=(",", ":")).encode() for i in range(100)]
    assert values[-1] == b'{"after":"restart"}'


def _reachable(url: str) -> bool:
    try:
        post(url, b"[]", timeout_s=2)
        return True
    except OSError:
        return False


def test_file_sink_writes_each_record_once_across_a_crash(broker, tmp_path):
    from clients import flush_all, produce_or_wait, producer_config
    from confluent_kafka import Producer

    topic = unique_topic("file-sink")
    create_topic(broker.bootstrap, topic, partitions=2)
    out = tmp_path / "out.jsonl"
    producer = Producer(producer_config(broker.bootstrap))
    for i in range(30_000):
        produce_or_wait(producer, topic, key=str(i % 10), value=json.dumps({"i": i}))
    flush_all(producer)
    create_connector(broker, "tofile", {"connector.class": "file-sink", "topics": topic, "file": str(out)})
    wait_until("lines", lambda: out.exists() and out.stat().st_size > 50_000, interval_s=0.01)
    broker.kill()
    broker.start()
    wait_until("30000 lines", lambda: out.read_text().count("\n") == 30_000, timeout_s=60)
    time.sleep(1)
    lines = out.read_text().splitlines()
    assert sorted(json.loads(line)["i"] for line in lines) == list(range(30_000))


def runnel(runnel_bin, broker, *args, check=True):
    env = {"RUNNEL_BROKERS": broker.bootstrap, "RUNNEL_ADMIN": broker.admin_url, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(runnel_bin), *args], capture_output=True, text=True, timeout=60, env=env)
    if check:
        assert result.returncode == 0, f"runnel {' '.join(args)} failed: {result.stderr}"
    return result


def test_cli_create_list_status_pause_resume_restart_delete(runnel_bin, broker, tmp_path):
    topic = unique_topic("cli-gen")
    create_topic(broker.bootstrap, topic, partitions=1)
    config = tmp_path / "gen.json"
    config.write_text(json.dumps({"name": "cligen", "config": {
        "connector.class": "datagen-source", "topic": topic, "records.per.second": "50"}}))
    assert "created cligen" in runnel(runnel_bin, broker, "connector", "create", "--file", str(config)).stdout
    listing = runnel(runnel_bin, broker, "connector", "list").stdout
    assert "cligen" in listing and "datagen-source" in listing and "RUNNING" in listing
    assert "RUNNING" in runnel(runnel_bin, broker, "connector", "status", "cligen").stdout
    runnel(runnel_bin, broker, "connector", "pause", "cligen")
    wait_until("PAUSED", lambda: "PAUSED" in runnel(runnel_bin, broker, "connector", "status", "cligen").stdout)
    runnel(runnel_bin, broker, "connector", "resume", "cligen")
    runnel(runnel_bin, broker, "connector", "restart", "cligen")
    wait_until("RUNNING", lambda: "RUNNING" in runnel(runnel_bin, broker, "connector", "status", "cligen").stdout)
    wait_until("events", lambda: total(broker, topic, 1) > 0)
    # The connector survives a restart of the broker.
    broker.restart()
    assert "cligen" in runnel(runnel_bin, broker, "connector", "list").stdout
    runnel(runnel_bin, broker, "connector", "delete", "cligen")
    missing = runnel(runnel_bin, broker, "connector", "status", "cligen", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr and "404" in missing.stderr
    bad = runnel(runnel_bin, broker, "connector", "create", "--file", str(tmp_path / "nope.json"), check=False)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


def wasm_module(name: str) -> pathlib.Path:
    path = REPO / "plugins" / "dist" / f"{name}.wasm"
    if not path.exists():
        pytest.fail(f"{path} is missing: run plugins/build.sh (tests/run.sh does)")
    return path


def test_a_wasm_module_shapes_source_records(broker, tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [json.dumps({"user": f"u{i}", "secret": "x", "page": f"/p{i}"}) for i in range(300)] + ["not json"]
    path.write_text("\n".join(lines) + "\n")
    topic = unique_topic("wasm-src")
    create_topic(broker.bootstrap, topic, partitions=1)
    create_connector(broker, "shaped", {
        "connector.class": "file-source", "file": str(path), "topic": topic, "poll.interval.ms": "50",
        "wasm.module": str(wasm_module("json-project")), "wasm.env.FIELDS": "user,page:url",
        "errors.tolerance": "all",
    })
    wait_until("300 records", lambda: total(broker, topic, 1) == 300)
    values = [json.loads(v) for v in all_values(broker, topic, 1)]
    assert values == [{"user": f"u{i}", "url": f"/p{i}"} for i in range(300)]
    assert connector_status(broker, "shaped")["tasks"][0]["state"] == "RUNNING"
