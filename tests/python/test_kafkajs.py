"""kafkajs (never uses flexible versions) against Runnel; confluent-kafka checks the records.

tests/run.sh installs kafkajs 2.2.4 into the cache directory named by RUNNEL_NODE_MODULES."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import pytest

from clients import consume_partitions, unique_topic

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "node" / "kafkajs_roundtrip.js"


def node_modules() -> pathlib.Path:
    return pathlib.Path(os.environ.get("RUNNEL_NODE_MODULES", pathlib.Path.home() / ".cache/runnel/node/node_modules"))


def test_kafkajs_admin_produce_and_offsets(broker):
    if shutil.which("node") is None or not (node_modules() / "kafkajs").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node or kafkajs missing in CI: tests/run.sh should have installed them")
        pytest.skip("node or kafkajs not installed (tests/run.sh installs them)")
    topic = unique_topic("kafkajs")
    env = dict(os.environ, NODE_PATH=str(node_modules()))
    result = subprocess.run(
        ["node", str(SCRIPT), broker.bootstrap, topic, "200"], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, f"kafkajs failed: {result.stderr}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"listed": True, "total": 200, "partitions": 3, "errors": 0}, summary
    records = consume_partitions(broker.bootstrap, topic, range(3))
    values = sorted(int(r.value[1:]) for part in records.values() for r in part)
    assert values == list(range(200))
    for part in records.values():
        keys = {r.key for r in part}
        for key in keys:
            seq = [int(r.value[1:]) for r in part if r.key == key]
            assert seq == sorted(seq), f"kafkajs key {key} out of order"
