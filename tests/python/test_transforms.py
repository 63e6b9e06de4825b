"""WASM transforms through the real binary: deployed with the CLI, fed and read by librdkafka.

The modules are the first-party plugins and the tutorial transform, built by
`plugins/build.sh` into `plugins/dist/` (tests/run.sh runs it first), and hostile WAT fixtures in
`tests/fixtures/wasm/`.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import threading
import time

import pytest
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
from runnel_harness import runnel_binary

REPO = pathlib.Path(__file__).resolve().parents[2]
DIST = REPO / "plugins" / "dist"
FIXTURES = REPO / "tests" / "fixtures" / "wasm"


def module(name: str) -> pathlib.Path:
    path = DIST / f"{name}.wasm"
    if not path.exists():
        pytest.fail(f"{path} is missing: run plugins/build.sh (tests/run.sh does)")
    return path


def runnel(runnel_bin, broker, *args, check=True):
    env = {"RUNNEL_BROKERS": broker.bootstrap, "RUNNEL_ADMIN": broker.admin_url, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(runnel_bin), *args], capture_output=True, text=True, timeout=60, env=env)
    if check:
        assert result.returncode == 0, f"runnel {' '.join(args)} failed: {result.stderr}"
    return result


def describe(broker, name: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"{broker.admin_url}/v1/transforms/{name}", timeout=5) as response:
        return json.loads(response.read())



def read_all(broker, topic: str, partitions: int) -> list:
    records = consume_partitions(broker.bootstrap, topic, range(partitions))
    return [r for p in range(partitions) for r in records[p]]


def high_watermarks(broker, topic: str, partitions: int) -> int:
    from clients import watermarks

    return sum(watermarks(broker.bootstrap, topic, p)[1] for p in range(partitions))


def events(count: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    actions = ["click", "view", "purchase", "scroll"]
    return [
        {"id": i, "user": f"u{rng.randrange(50)}", "action": rng.choice(actions), "page": f"/p{rng.randrange(20)}"}
        for i in range(count)
    ]


def produce_events(broker, topic: str, items: list[dict]) -> None:
    producer = Producer(producer_config(broker.bootstrap, **{"enable.idempotence": True, "linger.ms": 5}))
    for event in items:
        produce_or_wait(producer, topic, key=event["user"].encode(), value=json.dumps(event).encode())
    flush_all(producer)


def test_tutorial_transform_masks_and_routes_user_activity(runnel_bin, broker):
    activity, clicks, other = unique_topic("activity"), unique_topic("clicks"), unique_topic("other")
    create_topic(broker.bootstrap, activity, partitions=3)
    create_topic(broker.bootstrap, clicks, partitions=2)
    create_topic(broker.bootstrap, other, partitions=2)
    name = unique_topic("hello")
    out = runnel(
        runnel_bin, broker, "transform", "deploy", str(module("hello-transform")), "--name", name,
        "--input", activity, "--output", clicks, "--output", other, "--env", "SALT=s3cret", "--from", "earliest",
    ).stdout
    assert name in out
    items = events(3000)
    produce_events(broker, activity, items)
    wait_until("every event transformed", lambda: high_watermarks(broker, clicks, 2) + high_watermarks(broker, other, 2) >= 3000)

    click_out = [json.loads(r.value) for r in read_all(broker, clicks, 2)]
    other_out = [json.loads(r.value) for r in read_all(broker, other, 2)]
    assert sorted(e["id"] for e in click_out) == sorted(e["id"] for e in items if e["action"] == "click")
    assert sorted(e["id"] for e in other_out) == sorted(e["id"] for e in items if e["action"] != "click")
    raw_users = {e["user"] for e in items}
    assert not any(e["user"] in raw_users for e in click_out + other_out), "a raw user id leaked"
    # One user, one pseudonym.
    pseudonyms = {}
    for original, transformed in zip(sorted(items, key=lambda e: e["id"]), sorted(click_out + other_out, key=lambda e: e["id"])):
        pseudonyms.setdefault(original["user"], set()).add(transformed["user"])
    assert all(len(v) == 1 for v in pseudonyms.values())

    info = wait_until("the counters to settle", lambda: (lambda i: i if i["processed"] == 3000 else None)(describe(broker, name)))
    assert info["status"] == "RUNNING" and info["lag"] == 0 and info["failed"] == 0
    listing = runnel(runnel_bin, broker, "transform", "list").stdout
    assert name in listing and "RUNNING" in listing
    text = runnel(runnel_bin, broker, "transform", "describe", name).stdout
    assert activity in text and clicks in text


def test_deploy_errors_are_clear_and_change_nothing(runnel_bin, broker):
    topic, out = unique_topic("in"), unique_topic("out")
    create_topic(broker.bootstrap, topic, partitions=1)
    create_topic(broker.bootstrap, out, partitions=1)
    not_wasm = REPO / "README.md"
    cases = [
        (str(not_wasm), ["--input", topic, "--output", out]),
        (str(module("json-filter")), ["--input", unique_topic("absent"), "--output", out]),
        (str(module("json-filter")), ["--input", topic, "--output", topic]),
        (str(module("json-filter")), ["--input", topic, "--output", out, "--on-error", "explode"]),
    ]
    for path, args in cases:
        result = runnel(runnel_bin, broker, "transform", "deploy", path, "--name", "broken", *args, check=False)
        assert result.returncode != 0, f"deploy {args} should fail"
        assert result.stderr.strip().startswith("error:"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    missing = runnel(runnel_bin, broker, "transform", "describe", "broken", check=False)
    assert missing.returncode != 0 and "no transform" in missing.stderr


def test_pause_resume_upgrade_and_replay(runnel_bin, broker):
    topic, out = unique_topic("in"), unique_topic("out")
    create_topic(broker.bootstrap, topic, partitions=2)
    create_topic(broker.bootstrap, out, partitions=1)
    name = unique_topic("filter")
    deploy = lambda path, *env: runnel(
        runnel_bin, broker, "transform", "deploy", str(path), "--name", name, "--input", topic, "--output", out,
        "--from", "earliest", *[a for e in env for a in ("--env", e)],
    )
    deploy(module("json-filter"), "FIELD=action", "EQUALS=click")
    items = events(400, seed=1)
    produce_events(broker, topic, items[:200])
    clicks_first = sum(1 for e in items[:200] if e["action"] == "click")
    wait_until("first clicks", lambda: high_watermarks(broker, out, 1) >= clicks_first)

    runnel(runnel_bin, broker, "transform", "pause", name)
    wait_until("paused", lambda: describe(broker, name)["status"] == "PAUSED")
    produce_events(broker, topic, items[200:300])
    time.sleep(1.0)
    assert high_watermarks(broker, out, 1) == clicks_first, "a paused transform produced output"
    assert describe(broker, name)["lag"] == 100
    runnel(runnel_bin, broker, "transform", "resume", name)
    clicks_300 = sum(1 for e in items[:300] if e["action"] == "click")
    wait_until("clicks after resume", lambda: high_watermarks(broker, out, 1) >= clicks_300)

    # Upgrade in place to another module: it continues from the same position.
    deploy(module("json-project"), "FIELDS=id,action")
    assert describe(broker, name)["version"] == 2
    produce_events(broker, topic, items[300:])
    wait_until("projected records", lambda: high_watermarks(broker, out, 1) >= clicks_300 + 100)
    time.sleep(0.5)
    values = [json.loads(r.value) for r in read_all(broker, out, 1)]
    assert len(values) == clicks_300 + 100, "the upgrade repeated or lost input"
    assert all(set(v) == {"id", "action"} for v in values[clicks_300:])
    assert sorted(v["id"] for v in values[clicks_300:]) == [e["id"] for e in items[300:]]

    # Replay from the start: every input runs again through the current module.
    runnel(runnel_bin, broker, "transform", "replay", name, "--from", "earliest")
    wait_until("the replay", lambda: high_watermarks(broker, out, 1) >= clicks_300 + 100 + 400)
    replayed = [json.loads(r.value) for r in read_all(broker, out, 1)][clicks_300 + 100:]
    assert sorted(v["id"] for v in replayed) == list(range(400))


def test_broker_sigkill_mid_stream_gives_exactly_once_output_and_keeps_state(runnel_bin, broker_factory):
    """SIGKILL the broker while a stateless and a stateful transform run. After the restarts the
    router's output holds each matching input exactly once, and the dedup transform (whose
    state is one entry per id) never lets a re-sent id through again — its state came back."""
    broker = broker_factory()
    topic, routed, unique = unique_topic("in"), unique_topic("routed"), unique_topic("unique")
    for t in (topic, routed, unique):
        create_topic(broker.bootstrap, t, partitions=3)
    common = ["--input", topic, "--from", "earliest"]
    runnel(
        runnel_bin, broker, "transform", "deploy", str(module("router")), "--name", unique_topic("router"),
        "--output", routed, "--env", "FIELD=action", "--env", "ROUTES=click:0", "--env", "DEFAULT=drop", *common,
    )
    dedup = unique_topic("dedup")
    runnel(
        runnel_bin, broker, "transform", "deploy", str(module("dedup")), "--name", dedup, "--output", unique,
        "--env", "WINDOW_MS=1000000000000", "--env", "KEY_FIELD=id", *common,
    )
    rng = random.Random(int(os.environ.get("RUNNEL_TEST_SEED", "1234567")))
    previous: list[dict] = []
    for round_index in range(3):
        items = events(3000, seed=round_index)
        for e in items:
            e["id"] += round_index * 3000
        # Re-send some ids of the previous round: only restored dedup state can drop them.
        items += rng.sample(previous, min(300, len(previous)))
        previous = items
        feeder = threading.Thread(target=lambda: _produce_quietly(broker, topic, items))
        feeder.start()
        time.sleep(rng.uniform(0.1, 0.6))
        broker.kill()
        broker.start()
        feeder.join(timeout=120)
        assert not feeder.is_alive(), "the producer did not finish after the restart"

    # The input's contents are the truth (a producer cut off by a kill may or may not have landed).
    inputs = [json.loads(r.value) for r in read_all(broker, topic, 3)]
    expected_routed = sorted(e["id"] for e in inputs if e["action"] == "click")
    expected_unique = sorted({e["id"] for e in inputs})
    wait_until("the router to catch up", lambda: high_watermarks(broker, routed, 3) >= len(expected_routed))
    wait_until("dedup to catch up", lambda: describe(broker, dedup)["lag"] == 0)
    time.sleep(0.5)
    got_routed = sorted(json.loads(r.value)["id"] for r in read_all(broker, routed, 3))
    assert got_routed == expected_routed, (
        f"routed output differs: {len(got_routed)} records for {len(expected_routed)} inputs "
        f"(lost {sorted(set(expected_routed) - set(got_routed))[:5]})"
    )
    got_unique = sorted(json.loads(r.value)["id"] for r in read_all(broker, unique, 3))
    repeated = len(got_unique) - len(set(got_unique))
    assert repeated == 0, f"{repeated} ids passed dedup twice: its state was lost or outputs repeated"
    assert got_unique == expected_unique


def _produce_quietly(broker, topic, items):
    try:
        produce_events(broker, topic, items)
    except Exception:  # the kill interrupts the producer; what landed is what counts
        pass


WAT_FIXTURES = REPO / "runtime" / "tests" / "fixtures"


def wat_module(tmp_path, name: str) -> pathlib.Path:
    """A hostile fixture as a deployable .wasm (wat2wasm is a runtime example built by cargo test)."""
    # Built with the binary under test (tests/run.sh builds the examples of its profile).
    tool = runnel_binary().parent / "examples" / "wat2wasm"
    assert tool.exists(), f"{tool} missing: cargo build --examples -p runnel-runtime, same profile as RUNNEL_BIN"
    out = tmp_path / f"{name}.wasm"
    subprocess.run([str(tool), str(WAT_FIXTURES / f"{name}.wat"), str(out)], check=True, timeout=30)
    return out


def test_hostile_modules_are_contained(runnel_bin, broker, tmp_path):
    """Modules that spin, allocate without bound or trap are stopped and handled by their error
    policy; a well-behaved transform, producers and consumers keep being served meanwhile."""
    good_in, good_out = unique_topic("good-in"), unique_topic("good-out")
    for t in (good_in, good_out):
        create_topic(broker.bootstrap, t, partitions=2)
    runnel(
        runnel_bin, broker, "transform", "deploy", str(wat_module(tmp_path, "uppercase")), "--name", "good",
        "--input", good_in, "--output", good_out, "--from", "earliest",
    )
    hostile = {"loop": "dead-letter", "memory_bomb": "skip", "trap": "dead-letter"}
    for fixture, policy in hostile.items():
        topic_in, topic_out = unique_topic(f"{fixture}-in"), unique_topic(f"{fixture}-out")
        create_topic(broker.bootstrap, topic_in, partitions=1)
        create_topic(broker.bootstrap, topic_out, partitions=1)
        runnel(
            runnel_bin, broker, "transform", "deploy", str(wat_module(tmp_path, fixture)), "--name", fixture,
            "--input", topic_in, "--output", topic_out, "--on-error", policy, "--from", "earliest",
        )
        producer = Producer(producer_config(broker.bootstrap))
        for i in range(5):
            produce_or_wait(producer, topic_in, key=b"k", value=f"{fixture}-{i}".encode())
        flush_all(producer)
        hostile[fixture] = (topic_in, topic_out, policy)

    # Meanwhile the good transform serves its 2,000 records.
    producer = Producer(producer_config(broker.bootstrap, **{"linger.ms": 5}))
    for i in range(2000):
        produce_or_wait(producer, good_in, key=str(i % 17).encode(), value=f"value-{i}".encode())
    flush_all(producer)
    wait_until("the good transform's output", lambda: high_watermarks(broker, good_out, 2) >= 2000)
    values = sorted(r.value.decode() for r in read_all(broker, good_out, 2))
    assert values == sorted(f"VALUE-{i}" for i in range(2000))

    for fixture, (topic_in, topic_out, policy) in hostile.items():
        info = wait_until(f"{fixture} to fail its 5 records", lambda: (lambda i: i if i["failed"] == 5 else None)(describe(broker, fixture)))
        assert info["processed"] == 0 and info["lag"] == 0, info
        assert high_watermarks(broker, topic_out, 1) == 0, f"{fixture} produced output"
        logs = runnel(runnel_bin, broker, "transform", "logs", fixture).stdout
        assert "failed" in logs, logs
        if policy == "dead-letter":
            dead = read_all(broker, f"{fixture}.dlq", 1)
            assert sorted(r.value.decode() for r in dead) == [f"{fixture}-{i}" for i in range(5)]
            headers = dict(dead[0].headers)
            assert headers["runnel.source.topic"].decode() == topic_in
            kind = {"loop": b"deadline", "trap": b"trap"}[fixture]
            assert kind in headers["runnel.error"], headers["runnel.error"]
    assert "memory" in runnel(runnel_bin, broker, "transform", "logs", "memory_bomb").stdout

    # The broker is healthy and still takes plain produce and fetch.
    status, _ = __import__("runnel_harness").http_get(f"{broker.admin_url}/v1/health")
    assert status == 200
    plain = unique_topic("plain")
    create_topic(broker.bootstrap, plain, partitions=1)
    producer = Producer(producer_config(broker.bootstrap))
    produce_or_wait(producer, plain, value=b"still here")
    flush_all(producer)
    assert [r.value for r in read_all(broker, plain, 1)] == [b"still here"]


def test_modules_with_the_wrong_abi_or_imports_are_refused(runnel_bin, broker, tmp_path):
    topic, out = unique_topic("in"), unique_topic("out")
    create_topic(broker.bootstrap, topic, partitions=1)
    create_topic(broker.bootstrap, out, partitions=1)
    expected = {"wrong_abi": "version", "unknown_import": "import", "missing_export": "export"}
    for fixture, word in expected.items():
        result = runnel(
            runnel_bin, broker, "transform", "deploy", str(wat_module(tmp_path, fixture)), "--name", fixture,
            "--input", topic, "--output", out, check=False,
        )
        assert result.returncode == 1, result
        assert word in result.stderr.lower(), result.stderr
    assert runnel(runnel_bin, broker, "transform", "list").stdout.strip().splitlines()[1:] == []
