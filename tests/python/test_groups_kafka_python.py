"""Consumer groups with kafka-python members (KafkaConsumer(group_id=...)), each its own process
(group_workers.py): disjoint assignments, rebalances on join and leave, committed offsets
across a broker restart, static membership (group_instance_id)."""

from __future__ import annotations

import time

from group_workers import (  # noqa: F401  (group_scenario is a fixture)
    PARTITIONS,
    make_topic,
    GROUP_BROKER_SETS,
    SESSION_TIMEOUT_MS,
    group_scenario,
    phase,
    static_member_restart,
    wait_state,
)


def test_kafka_python_group_join_leave_and_broker_restart(broker_factory, group_scenario):
    broker = broker_factory(sets=GROUP_BROKER_SETS)
    s = group_scenario("kafka-python", broker, make_topic(broker, "kp-grp"), PARTITIONS)

    # Three members: disjoint assignments covering all six partitions; exactly once.
    s.start("a", "b", "c")
    phase(s, "abc", 600)
    assert s.broker_group().partition_assignor == "range", "kafka-python's first (preferred) assignor is range"

    # A fourth joins: everyone rebalances; moved partitions continue from their commits.
    s.start("d")
    owners = phase(s, "abcd", 300)
    assert "d" in owners.values()

    # One leaves (close: LeaveGroup): the others take its partitions over at once.
    left_at = time.monotonic()
    s.members["b"].stop()
    s.wait_assignments("acd")
    took = time.monotonic() - left_at
    assert took < SESSION_TIMEOUT_MS / 1000, f"the others took over {took:.1f} s after a clean leave (session timeout?)"
    phase(s, "acd", 300)

    # Everyone leaves; SIGTERM and start again: the offsets are kept and new members resume.
    s.stop_all()
    wait_state(s, "EMPTY")
    committed = s.committed()
    assert committed == s.log_ends()

    broker.restart()
    assert s.committed_after_restart() == committed
    s.start("e", "f")
    phase(s, "ef", 300)
    # Every record exactly once over the whole run: the new members started at the offsets
    # committed before the restart.
    s.check_exactly_once(range(s.produced))
    s.check_records_intact()
    s.stop_all()
    wait_state(s, "EMPTY")


def test_kafka_python_static_membership(broker_factory, group_scenario):
    broker = broker_factory(sets=GROUP_BROKER_SETS)
    s = group_scenario("kafka-python", broker, make_topic(broker, "kp-static"), PARTITIONS)
    static_member_restart(s)
