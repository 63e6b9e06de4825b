"""The `runnel` CLI against a running broker: topic admin, produce and consume, and errors
that print one line and exit non-zero."""

from __future__ import annotations

import subprocess

from clients import consume_partitions, unique_topic


def run(runnel_bin, broker, *args, input_text=None, check=True):
    env = {"RUNNEL_BROKERS": broker.bootstrap, "RUNNEL_ADMIN": broker.admin_url, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [str(runnel_bin), *args], input=input_text, capture_output=True, text=True, timeout=60, env=env
    )
    if check:
        assert result.returncode == 0, f"runnel {' '.join(args)} failed: {result.stderr}"
    return result


def test_topic_lifecycle_and_round_trip(runnel_bin, broker):
    topic = unique_topic("cli")
    run(runnel_bin, broker, "topic", "create", topic, "--partitions", "3", "--config", "retention.ms=3600000")
    assert topic in run(runnel_bin, broker, "topic", "list").stdout.split()

    lines = "".join(f"user{i % 5}:event-{i}\n" for i in range(50))
    run(runnel_bin, broker, "produce", topic, "--key-separator", ":", input_text=lines)
    out = run(runnel_bin, broker, "consume", topic, "--from-beginning", "--num", "50", "--format", "%k|%v|%p|%o").stdout
    rows = [line.split("|") for line in out.strip().splitlines()]
    assert len(rows) == 50
    assert sorted(r[1] for r in rows) == sorted(f"event-{i}" for i in range(50))
    # One key, one partition, produce order kept (the CLI partitions by murmur2 like Java).
    by_key: dict[str, list[tuple[str, int]]] = {}
    for key, value, partition, offset in rows:
        by_key.setdefault(key, []).append((partition, int(value.split("-")[1])))
    for key, seen in by_key.items():
        assert len({p for p, _ in seen}) == 1, f"key {key} spread over partitions"
        assert [v for _, v in seen] == sorted(v for _, v in seen), f"key {key} out of order"

    # Real clients see what the CLI wrote.
    records = consume_partitions(broker.bootstrap, topic, range(3))
    assert sum(len(r) for r in records.values()) == 50

    describe = run(runnel_bin, broker, "topic", "describe", topic).stdout
    assert "retention.ms" in describe and "3600000" in describe
    run(runnel_bin, broker, "topic", "alter-config", topic, "--set", "retention.ms=1000")
    assert "1000" in run(runnel_bin, broker, "topic", "describe", topic).stdout

    run(runnel_bin, broker, "topic", "delete", topic)
    assert topic not in run(runnel_bin, broker, "topic", "list").stdout.split()


def test_add_partitions_grows_a_topic_and_refuses_to_shrink_it(runnel_bin, broker):
    topic = unique_topic("cli-grow")
    run(runnel_bin, broker, "topic", "create", topic, "--partitions", "2")
    run(runnel_bin, broker, "produce", topic, input_text="".join(f"before-{i}\n" for i in range(10)))

    out = run(runnel_bin, broker, "topic", "add-partitions", topic, "--num", "2").stdout
    assert "4 partitions" in out and "was 2" in out
    run(runnel_bin, broker, "topic", "add-partitions", topic, "--total", "6")
    assert "PartitionCount: 6" in run(runnel_bin, broker, "topic", "describe", topic).stdout

    # The new partitions take records, and the old ones kept theirs.
    run(runnel_bin, broker, "produce", topic, "--key-separator", ":", input_text="".join(f"k{i}:after-{i}\n" for i in range(60)))
    records = consume_partitions(broker.bootstrap, topic, range(6))
    values = [record.value for partition in records.values() for record in partition]
    assert sorted(v for v in values if v.startswith(b"before-")) == sorted(f"before-{i}".encode() for i in range(10))
    assert len([v for v in values if v.startswith(b"after-")]) == 60
    assert any(records[p] for p in (2, 3, 4, 5)), "no record reached a new partition"

    # Shrinking, or not growing, is Kafka's INVALID_PARTITIONS: one line, non-zero exit, no change.
    for args in (("--total", "3"), ("--total", "6")):
        result = run(runnel_bin, broker, "topic", "add-partitions", topic, *args, check=False)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "6 now" in errors[0], result.stderr
    # Saying neither how many nor both is a usage error.
    for args in ((), ("--num", "1", "--total", "9")):
        assert run(runnel_bin, broker, "topic", "add-partitions", topic, *args, check=False).returncode == 2
    assert "PartitionCount: 6" in run(runnel_bin, broker, "topic", "describe", topic).stdout


def test_errors_are_one_line_and_exit_non_zero(runnel_bin, broker):
    topic = unique_topic("cli-errors")
    run(runnel_bin, broker, "topic", "create", topic, "--partitions", "1")
    cases = [
        ("topic", "create", topic, "--partitions", "1"),  # already exists
        ("topic", "describe", unique_topic("absent")),
        ("topic", "create", unique_topic("bad"), "--config", "retention.ms=soon"),
        ("consume", topic, "--partition", "0", "--offset", "999", "--num", "1"),
    ]
    for args in cases:
        result = run(runnel_bin, broker, *args, check=False)
        assert result.returncode != 0, f"runnel {' '.join(args)} should fail"
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, f"one error line expected for {args}, got: {result.stderr!r}"


def test_unreachable_broker_is_a_clear_error(runnel_bin, tmp_path):
    result = subprocess.run(
        [str(runnel_bin), "topic", "list", "--brokers", "127.0.0.1:1"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "127.0.0.1:1" in result.stderr
