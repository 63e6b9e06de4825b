"""Consumer groups with confluent-kafka (librdkafka) members, each its own process
(group_workers.py): assignments, rebalances on join/leave/crash, committed offsets across
broker restarts, static membership, the cooperative-sticky assignor.

Members commit explicit offsets synchronously after logging each batch, so a record may be
read twice only when a member dies (or a commit races a rebalance) with records in flight;
every phase without a crash produces only after the group settled and checks exactly once.
"""

from __future__ import annotations

import threading
import time

from group_workers import (  # noqa: F401  (group_scenario is a fixture)
    PARTITIONS,
    make_topic,
    GROUP_BROKER_SETS,
    HEARTBEAT_INTERVAL_MS,
    SESSION_TIMEOUT_MS,
    group_scenario,
    phase,
    static_member_restart,
    wait_state,
    wait_until,
)


def test_group_join_leave_and_crash(broker_factory, group_scenario):
    broker = broker_factory(sets=GROUP_BROKER_SETS)
    s = group_scenario("confluent", broker, make_topic(broker, "grp"), PARTITIONS)

    # Three members: disjoint assignments covering all six partitions; exactly once.
    s.start("a", "b", "c")
    phase(s, "abc", 600)

    # A fourth joins: everyone rebalances, still disjoint and complete, and the moved
    # partitions continue from their committed offsets (nothing read twice).
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

    # One is SIGKILLed while records flow: after its session times out the others own
    # everything, nothing is lost, and only records of this phase may be read twice.
    crash_start = s.produced
    stop_producing = threading.Event()
    producer_errors = []

    def keep_producing():
        try:
            while not stop_producing.is_set():
                s.produce(10)
                time.sleep(0.05)
        except Exception as e:  # reported by the main thread
            producer_errors.append(e)

    producer = threading.Thread(target=keep_producing, name="producer", daemon=True)
    producer.start()
    try:
        wait_until(
            "the victim reads records of the crash phase",
            lambda: any(seq >= crash_start for seq, _, _ in s.consumed(["a"])),
            timeout_s=30,
        )
        s.members["a"].kill()
        killed_at = time.monotonic()
        s.wait_assignments("cd")
        took = time.monotonic() - killed_at
        time.sleep(1.0)  # records keep flowing to the new owners
    finally:
        stop_producing.set()
        producer.join(timeout=60)
    assert not producer.is_alive(), "producer thread did not stop"
    assert not producer_errors, f"producing failed: {producer_errors[0]!r}"
    assert took >= (SESSION_TIMEOUT_MS - HEARTBEAT_INTERVAL_MS) / 1000 - 1.0, (
        f"the killed member's partitions moved {took:.1f} s after SIGKILL, before its session timed out"
    )

    s.wait_all_consumed_and_committed()
    consumed = s.consumed()
    counts = {}
    for seq, _, _ in consumed:
        counts[seq] = counts.get(seq, 0) + 1
    missing = sorted(set(range(s.produced)) - set(counts))
    assert not missing, f"{len(missing)} records lost, e.g. {['v%d' % n for n in missing[:10]]}"
    early_duplicates = sorted(seq for seq, c in counts.items() if c > 1 and seq < crash_start)
    assert not early_duplicates, f"records from before the crash read twice: {early_duplicates[:10]}"
    s.check_records_intact()

    # The last members leave: the group is Empty and keeps its offsets at the log ends.
    s.stop_all()
    wait_state(s, "EMPTY")
    assert s.committed() == s.log_ends()


def test_committed_offsets_survive_broker_restart_and_sigkill(broker_factory, group_scenario):
    broker = broker_factory(sets=GROUP_BROKER_SETS)
    s = group_scenario("confluent", broker, make_topic(broker, "grp-restart"), PARTITIONS)
    s.start("a", "b")
    phase(s, "ab", 300)
    s.stop_all()
    wait_state(s, "EMPTY")
    committed = s.committed()
    assert committed == s.log_ends()

    # SIGTERM and start again: the offsets are still there and new members resume from them.
    broker.restart()
    assert s.committed_after_restart() == committed
    wait_state(s, "EMPTY")
    s.start("c", "d")
    phase(s, "cd", 300)
    s.check_exactly_once(range(s.produced))  # the first batch was not read again

    # SIGKILL under live members (quiet: everything committed): the commits were fsynced
    # before they were acknowledged, the group comes back Stable with its members, so
    # nobody rebalances and consumption goes on from the committed offsets.
    committed = s.committed()
    rebalance_events = {n: len(s.members[n].rebalance_events()) for n in "cd"}
    broker.kill()
    broker.start()
    assert s.committed_after_restart() == committed
    seqs = s.produce(300)
    s.wait_all_consumed_and_committed()
    s.check_exactly_once(range(s.produced))
    assert {n: len(s.members[n].rebalance_events()) for n in "cd"} == rebalance_events, (
        "members rebalanced across a quick broker restart (the group should come back Stable with them)\n"
        + s.describe_members("cd")
    )
    assert set(seqs) <= {seq for seq, _, _ in s.consumed(["c", "d"])}
    s.stop_all()
    wait_state(s, "EMPTY")


def test_static_membership(broker_factory, group_scenario):
    broker = broker_factory(sets=GROUP_BROKER_SETS)
    s = group_scenario("confluent", broker, make_topic(broker, "grp-static"), PARTITIONS)
    static_member_restart(s)


def test_cooperative_sticky(broker_factory, group_scenario):
    broker = broker_factory(sets=GROUP_BROKER_SETS)
    s = group_scenario("confluent", broker, make_topic(broker, "grp-coop"), PARTITIONS, strategy="cooperative-sticky")
    s.start("a", "b", "c")
    phase(s, "abc", 300)
    described = s.broker_group()
    assert described.partition_assignor == "cooperative-sticky", f"protocol {described.partition_assignor!r}"
    old = {n: s.members[n].assignment() for n in "abc"}

    # A member joins: only what moves to it is revoked; kept partitions are never paused.
    joined_at = time.time()
    s.start("d")
    phase(s, "abcd", 300)
    new = {n: s.members[n].assignment() for n in "abcd"}
    for n in "abc":
        assert new[n] <= old[n], f"{n} got partitions {sorted(new[n] - old[n])} from another old member (not sticky)"
        _assert_incremental(s, n, since=joined_at, kept=new[n], may_lose=old[n] - new[n])
    assert new["d"], "the new member got nothing"

    # A member leaves: the others add its partitions and keep their own.
    left_at = time.time()
    s.members["d"].stop()
    phase(s, "abc", 300)
    for n in "abc":
        now = s.members[n].assignment()
        assert now >= new[n], f"{n} lost {sorted(new[n] - now)} when d left (not sticky)"
        _assert_incremental(s, n, since=left_at, kept=new[n], may_lose=frozenset())
    s.check_exactly_once(range(s.produced))
    s.stop_all()


def _assert_incremental(s, name, since, kept, may_lose):
    events = [e for e in s.members[name].events() if e["t"] >= since]
    revoked = set()
    for e in events:
        if e["event"] == "revoked":
            revoked |= set(e["partitions"])
        if e["event"] == "assignment":
            paused = kept - set(e["partitions"])
            assert not paused, f"{name} stopped owning {sorted(paused)} during a cooperative rebalance: {events}"
    assert revoked <= may_lose, f"{name} had {sorted(revoked - may_lose)} revoked, which it kept: {events}"
