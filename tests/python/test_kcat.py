"""kcat (librdkafka's command-line client): produce with keys, consume back, list metadata."""

import json
import shutil
import subprocess

import pytest

from clients import unique_topic

KCAT_TIMEOUT_S = 60
PARTITIONS = 3


@pytest.fixture(scope="module")
def kcat():
    path = shutil.which("kcat") or shutil.which("kafkacat")
    if path is None:
        pytest.fail("kcat is not installed: tests/run.sh installs it with apt-get install kcat")
    return path


def run_kcat(kcat, *args, input_text=None):
    result = subprocess.run(
        [kcat, *args, "-X", "broker.address.family=v4"],
        input=input_text,
        capture_output=True,
        text=True,
        timeout=KCAT_TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"kcat {' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-2000:]}"
    )
    return result.stdout


def test_kcat_produce_keys_consume_and_list_metadata(kcat, broker_factory):
    broker = broker_factory(sets={"num.partitions": str(PARTITIONS)})
    topic = unique_topic("kcat")
    keys = [f"key{k}" for k in range(20)]
    lines = [f"{keys[i % len(keys)]}:value-{i}" for i in range(500)]

    run_kcat(kcat, "-b", broker.bootstrap, "-P", "-t", topic, "-K:", "-X", "acks=all",
             input_text="\n".join(lines) + "\n")

    out = run_kcat(kcat, "-b", broker.bootstrap, "-C", "-t", topic, "-e", "-o", "beginning",
                   "-f", "%p|%o|%k|%s\n")
    consumed = [line.split("|", 3) for line in out.splitlines() if line]
    assert len(consumed) == len(lines), f"produced {len(lines)} lines, kcat consumed {len(consumed)}"
    assert sorted(f"{k}:{v}" for _, _, k, v in consumed) == sorted(lines), "consumed key:value pairs differ from produced"

    # Same key → same partition, and within a key the produce order is kept.
    partitions_of_key = {}
    for p, _, k, _ in consumed:
        partitions_of_key.setdefault(k, set()).add(p)
    assert all(len(ps) == 1 for ps in partitions_of_key.values()), f"a key spread over partitions: {partitions_of_key}"
    by_partition = {}
    for p, o, k, v in consumed:
        by_partition.setdefault(p, []).append((int(o), k, v))
    for p, records in by_partition.items():
        offsets = [o for o, _, _ in records]
        assert offsets == list(range(len(records))), f"partition {p}: offsets not 0..n-1 in order: {offsets[:20]}"
    for key in keys:
        p = next(iter(partitions_of_key[key]))
        seen = [int(v.split("-")[1]) for _, k, v in by_partition[p] if k == key]
        assert seen == sorted(seen), f"key {key}: values out of produce order: {seen}"

    metadata = json.loads(run_kcat(kcat, "-b", broker.bootstrap, "-L", "-J", "-t", topic))
    topics = {t["topic"]: t for t in metadata["topics"]}
    assert topic in topics, f"kcat -L does not list {topic}: {list(topics)}"
    assert topics[topic].get("error") in (None, ""), f"topic error in metadata: {topics[topic]}"
    ids = sorted(p["partition"] for p in topics[topic]["partitions"])
    assert ids == list(range(PARTITIONS)), f"partitions listed {ids}, wanted 0..{PARTITIONS - 1} (num.partitions)"
    broker_ids = {b["id"] for b in metadata["brokers"]}
    for p in topics[topic]["partitions"]:
        assert p["leader"] in broker_ids, f"partition {p['partition']} leader {p['leader']} not in brokers {broker_ids}"


def test_kcat_null_value_tombstone(kcat, broker):
    topic = unique_topic("kcat-null")
    # -Z: an empty value is sent as NULL (a tombstone).
    run_kcat(kcat, "-b", broker.bootstrap, "-P", "-t", topic, "-K:", "-Z", input_text="k1:v1\nk2:\nk3:v3\n")
    out = run_kcat(kcat, "-b", broker.bootstrap, "-C", "-t", topic, "-e", "-o", "beginning", "-Z",
                   "-f", "%k|%S|%s\n")
    rows = [line.split("|", 2) for line in out.splitlines() if line]
    assert rows == [["k1", "2", "v1"], ["k2", "-1", "NULL"], ["k3", "2", "v3"]], f"kcat read back {rows}"
