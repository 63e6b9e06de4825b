"""Consumer-group members as subprocesses, and what the group tests observe of them.

Each member runs this file as a script (`python group_workers.py CONFIG_JSON`): it subscribes
with confluent-kafka or kafka-python and appends JSON lines to its own file — every change of
its assignment, every rebalance callback, every record (logged *before* its offset is
committed, so a crash between the two shows as a duplicate, never as a loss) and every commit.
After each batch it commits the next offsets explicitly and synchronously (at-least-once).
SIGTERM closes the consumer (LeaveGroup for a dynamic member) and exits 0; SIGKILL is a crash.

In the test process, `GroupScenario` starts and stops members, produces keyed records whose
values are sequence numbers, and waits until the members' own view of their assignments and
the broker's (DescribeGroups, OffsetFetch through confluent-kafka's AdminClient) agree.
Every wait is bounded.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Iterable, Optional

import pytest

# Kafka's defaults for a broker are 6000 for group.min.session.timeout.ms; the members ask for
# exactly that, so a SIGKILLed member is noticed within ~6 s.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000
# Also the rebalance timeout of the classic protocol: bounds a join round if a member hangs.
MAX_POLL_INTERVAL_MS = 60000
# The broker setting every group test uses, so members started together land in one generation
# quickly.
GROUP_BROKER_SETS = {"group.initial.rebalance.delay.ms": "100"}

WAIT_S = 45.0


# =============================================================================================
# The member process
# =============================================================================================


def _member_main(config: dict) -> int:
    out = open(config["out"], "a", buffering=1)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))

    def log(event: str, **fields) -> None:
        fields["event"] = event
        fields["t"] = time.time()
        out.write(json.dumps(fields) + "\n")  # one write per line; line buffered

    log("started", pid=os.getpid())
    if config["lib"] == "confluent":
        _run_confluent(config, log, stopping)
    else:
        _run_kafka_python(config, log, stopping)
    log("closed")
    return 0


def _run_confluent(config: dict, log, stopping: list) -> None:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    conf = {
        "bootstrap.servers": config["bootstrap"],
        "broker.address.family": "v4",
        "group.id": config["group"],
        "client.id": config["client_id"],
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "session.timeout.ms": config["session_timeout_ms"],
        "heartbeat.interval.ms": config["heartbeat_interval_ms"],
        "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
        "fetch.wait.max.ms": 100,
        "check.crcs": True,
        "reconnect.backoff.max.ms": 1000,
        "error_cb": lambda err: log("client-error", error=str(err)),
    }
    if config.get("instance_id"):
        conf["group.instance.id"] = config["instance_id"]
    if config.get("strategy"):
        conf["partition.assignment.strategy"] = config["strategy"]
    topic = config["topic"]
    consumer = Consumer(conf)
    consumer.subscribe(
        [topic],
        on_assign=lambda c, ps: log("assigned", partitions=sorted(p.partition for p in ps)),
        on_revoke=lambda c, ps: log("revoked", partitions=sorted(p.partition for p in ps)),
        on_lost=lambda c, ps: log("lost", partitions=sorted(p.partition for p in ps)),
    )
    last = None
    while not stopping:
        messages = consumer.consume(num_messages=200, timeout=0.2)
        now = sorted(p.partition for p in consumer.assignment())
        if now != last:
            last = now
            log("assignment", partitions=now, member_id=consumer.memberid())
        next_offsets = {}
        for m in messages:
            if m.error() is not None:
                log("error", error=str(m.error()))
                continue
            log("record", p=m.partition(), o=m.offset(), k=_text(m.key()), v=_text(m.value()))
            next_offsets[m.partition()] = m.offset() + 1
        if next_offsets:
            offsets = [TopicPartition(topic, p, o) for p, o in sorted(next_offsets.items())]
            try:
                result = consumer.commit(offsets=offsets, asynchronous=False)
                failed = {tp.partition: str(tp.error) for tp in result or [] if tp.error is not None}
                if failed:
                    log("commit-failed", errors=failed)
                else:
                    log("committed", offsets=next_offsets)
            except KafkaException as e:
                log("commit-failed", error=str(e))
    consumer.close()


def _run_kafka_python(config: dict, log, stopping: list) -> None:
    from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
    from kafka.consumer.subscription_state import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        def on_partitions_assigned(self, assigned):
            log("assigned", partitions=sorted(tp.partition for tp in assigned))

        def on_partitions_revoked(self, revoked):
            log("revoked", partitions=sorted(tp.partition for tp in revoked))

    kwargs = dict(
        bootstrap_servers=config["bootstrap"],
        group_id=config["group"],
        client_id=config["client_id"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=config["session_timeout_ms"],
        heartbeat_interval_ms=config["heartbeat_interval_ms"],
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        fetch_max_wait_ms=100,
        check_crcs=True,
        reconnect_backoff_max_ms=1000,
    )
    if config.get("instance_id"):
        kwargs["group_instance_id"] = config["instance_id"]
    topic = config["topic"]
    consumer = KafkaConsumer(**kwargs)
    consumer.subscribe([topic], listener=Listener())
    last = None
    while not stopping:
        batches = consumer.poll(timeout_ms=200)
        now = sorted(tp.partition for tp in consumer.assignment())
        if now != last:
            last = now
            log("assignment", partitions=now)
        next_offsets = {}
        for tp, records in batches.items():
            for r in records:
                log("record", p=r.partition, o=r.offset, k=_text(r.key), v=_text(r.value))
                next_offsets[r.partition] = r.offset + 1
        if next_offsets:
            offsets = {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in next_offsets.items()}
            try:
                consumer.commit(offsets)
                log("committed", offsets=next_offsets)
            except Exception as e:  # CommitFailedError and friends: at-least-once goes on
                log("commit-failed", error=repr(e))
    consumer.close()


def _text(raw: Optional[bytes]) -> Optional[str]:
    return None if raw is None else raw.decode("utf-8", "replace")


# =============================================================================================
# The test side
# =============================================================================================


class Member:
    """One member subprocess and its event log."""

    def __init__(self, name: str, config: dict, log_dir: pathlib.Path):
        from runnel_harness import _die_with_parent

        self.name = name
        self.config = config
        self.out_path = log_dir / f"member-{name}.jsonl"
        self.err_path = log_dir / f"member-{name}.stderr"
        config = dict(config, out=str(self.out_path))
        with open(self.err_path, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(pathlib.Path(__file__).resolve()), json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # no member outlives a test killed by its timeout
            )

    # --- what it logged --------------------------------------------------------------------
    def events(self, kind: Optional[str] = None) -> list[dict]:
        try:
            text = self.out_path.read_text("utf-8")
        except FileNotFoundError:
            return []
        # A SIGKILL may leave a torn last line: only complete lines count.
        events = [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]
        return events if kind is None else [e for e in events if e["event"] == kind]

    def assignment(self) -> frozenset:
        """The partitions it owns now (its last reported `assignment()`)."""
        snapshots = self.events("assignment")
        return frozenset(snapshots[-1]["partitions"]) if snapshots else frozenset()

    def rebalance_events(self) -> list[dict]:
        return [e for e in self.events() if e["event"] in ("assigned", "revoked", "lost", "assignment")]

    def records(self) -> list[dict]:
        return self.events("record")

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            tail = self.err_path.read_text("utf-8", "replace").splitlines()[-lines:]
        except FileNotFoundError:
            return ""
        return "\n".join(tail)

    # --- lifecycle -------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM: close() the consumer (LeaveGroup for dynamic members), exit 0."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(f"member {self.name} did not close within {timeout_s} s\n{self.stderr_tail()}")
        assert code == 0, f"member {self.name} exited with {code}\n{self.stderr_tail()}"
        assert self.events("closed"), f"member {self.name} exited without closing its consumer"

    def kill(self) -> None:
        """SIGKILL: no LeaveGroup, no last commit."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def wait_until(what: str, check, timeout_s: float = WAIT_S, interval_s: float = 0.1, detail=lambda: ""):
    """Polls `check()` until it returns something truthy (returned); fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for: {what}\n{detail()}")
        time.sleep(interval_s)


class GroupScenario:
    """One group consuming one topic; members by name; records keyed `k{n}` with value `v{n}`."""

    def __init__(self, lib: str, bootstrap: str, topic: str, partitions: int, group: str, log_dir: pathlib.Path,
                 strategy: Optional[str] = None):
        from confluent_kafka import Producer

        from clients import admin_client, producer_config

        self.lib = lib
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.group = group
        self.log_dir = log_dir
        self.strategy = strategy
        self.members: dict[str, Member] = {}
        self.produced = 0  # values v0 .. v{produced-1} exist
        self.admin = admin_client(bootstrap)
        self.producer = Producer(producer_config(bootstrap, **{"linger.ms": 2}))

    # --- members ---------------------------------------------------------------------------
    def start(self, *names: str, instance_id: Optional[str] = None) -> list[Member]:
        started = []
        for name in names:
            assert name not in self.members, f"member name {name} reused"
            config = {
                "lib": self.lib,
                "bootstrap": self.bootstrap,
                "group": self.group,
                "topic": self.topic,
                "client_id": f"{self.lib}-{name}",
                "instance_id": instance_id,
                "strategy": self.strategy,
                "session_timeout_ms": SESSION_TIMEOUT_MS,
                "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
            }
            self.members[name] = Member(name, config, self.log_dir)
            started.append(self.members[name])
        return started

    def stop_all(self) -> None:
        for member in self.members.values():
            if member.alive():
                member.stop()

    def kill_all(self) -> None:
        for member in self.members.values():
            member.kill()

    def describe_members(self, names: Iterable[str]) -> str:
        lines = []
        for name in names:
            m = self.members[name]
            events = m.events()
            lines.append(
                f"  {name}: alive={m.alive()} assignment={sorted(m.assignment())} "
                f"records={sum(e['event'] == 'record' for e in events)} last events={events[-4:]}"
            )
            if m.stderr_tail(5):
                lines.append("    stderr: " + m.stderr_tail(5).replace("\n", "\n    stderr: "))
        return "\n".join(lines)

    # --- the broker's view -----------------------------------------------------------------
    def broker_group(self):
        """DescribeGroups through confluent-kafka: a ConsumerGroupDescription."""
        futures = self.admin.describe_consumer_groups([self.group], request_timeout=10)
        return futures[self.group].result(timeout=15)

    def broker_assignments(self) -> tuple[str, list[frozenset]]:
        described = self.broker_group()
        assignments = []
        for member in described.members:
            tps = member.assignment.topic_partitions if member.assignment else []
            assignments.append(frozenset(tp.partition for tp in tps if tp.topic == self.topic))
        return described.state.name, sorted(assignments, key=sorted)

    def committed(self) -> dict[int, int]:
        """OffsetFetch: partition → committed offset (negative where there is none: librdkafka
        reports OFFSET_INVALID, -1001)."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        request = ConsumerGroupTopicPartitions(self.group, [TopicPartition(self.topic, p) for p in range(self.partitions)])
        futures = self.admin.list_consumer_group_offsets([request], request_timeout=10)
        result = futures[self.group].result(timeout=15)
        for tp in result.topic_partitions:
            assert tp.error is None, f"OffsetFetch error for {self.topic} [{tp.partition}]: {tp.error}"
        return {tp.partition: tp.offset for tp in result.topic_partitions}

    def committed_after_restart(self, timeout_s: float = 30.0) -> dict[int, int]:
        """Call after every broker restart: new admin and producer clients for the test's own
        use, then committed(), retried while the restarted broker answers with an error.

        The new clients work around a librdkafka 2.16 client bug, not a broker one: when the
        only broker goes away, librdkafka re-bootstraps and decommissions the learned broker,
        and an admin request for a group coordinator that was cached on it can wait on the
        dead broker handle until it times out, again and again (confluentinc/librdkafka#5511,
        fix proposed in #5512). The broker never sees the request. The members' consumers
        find their coordinator through a different path, which re-queries and recovers.
        """
        from confluent_kafka import Producer

        from clients import admin_client, producer_config

        self.admin = admin_client(self.bootstrap)
        self.producer = Producer(producer_config(self.bootstrap, **{"linger.ms": 2}))
        errors: list = []

        def attempt():
            try:
                return self.committed()
            except Exception as e:  # COORDINATOR_LOAD_IN_PROGRESS, a reconnecting client
                errors.append(e)
                return None

        return wait_until("OffsetFetch after a broker restart", attempt, timeout_s, 0.2,
                          detail=lambda: f"{len(errors)} failed attempts, last: {errors[-1]!r}" if errors else "")

    def log_ends(self) -> dict[int, int]:
        """ListOffsets (latest) of every partition, fresh from the broker."""
        from confluent_kafka import Consumer, TopicPartition

        from clients import consumer_config

        consumer = Consumer(consumer_config(self.bootstrap))
        try:
            return {
                p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10, cached=False)[1]
                for p in range(self.partitions)
            }
        finally:
            consumer.close()

    # --- waits -----------------------------------------------------------------------------
    def wait_assignments(self, names: Iterable[str], timeout_s: float = WAIT_S) -> dict[int, str]:
        """Until `names` (alive) each own at least one partition, their assignments are disjoint
        and cover every partition, and the broker says Stable with exactly those assignments.
        Returns partition → owner name."""
        from confluent_kafka import KafkaException

        names = list(names)
        admin_errors: list = []

        def settled():
            owned = {n: self.members[n].assignment() for n in names}
            if not all(owned.values()):
                return None
            union = frozenset().union(*owned.values())
            if union != frozenset(range(self.partitions)) or sum(map(len, owned.values())) != self.partitions:
                return None
            try:
                state, broker_view = self.broker_assignments()
            except KafkaException as e:  # a slow or reconnecting admin client: ask again
                admin_errors.append(e)
                return None
            if state != "STABLE" or broker_view != sorted(owned.values(), key=sorted):
                return None
            return {p: n for n, ps in owned.items() for p in ps}

        def detail():
            try:
                view = self.broker_assignments()
            except Exception as e:  # the broker may be what is wrong
                view = repr(e)
            errors = f"{len(admin_errors)} DescribeGroups errors, last {admin_errors[-1]!r}\n" if admin_errors else ""
            return f"{errors}broker view: {view}\nmembers:\n{self.describe_members(self.members)}"

        owners = wait_until(
            f"{names} own disjoint assignments covering {self.partitions} partitions (broker agrees)",
            settled,
            timeout_s,
            interval_s=0.2,
            detail=detail,
        )
        for name in names:
            assert self.members[name].alive(), f"member {name} died\n{self.members[name].stderr_tail()}"
        return owners

    def produce(self, count: int, partition_of=None, timestamp_of=None) -> range:
        """`count` keyed records, acks=all; returns their sequence numbers. The partition is the
        default partitioner's unless `partition_of(seq)` says; `timestamp_of(seq)` sets
        CreateTime in ms."""
        from clients import Delivery, flush_all, produce_or_wait

        seqs = range(self.produced, self.produced + count)
        delivery = Delivery()
        for n in seqs:
            extra = {}
            if partition_of is not None:
                extra["partition"] = partition_of(n)
            if timestamp_of is not None:
                extra["timestamp"] = timestamp_of(n)
            produce_or_wait(self.producer, self.topic, key=f"k{n}".encode(), value=f"v{n}".encode(),
                            on_delivery=delivery.callback, **extra)
        flush_all(self.producer)
        assert not delivery.failed, f"delivery failed: {delivery.failed[:3]}"
        self.produced += count
        return seqs

    def consumed(self, names: Optional[Iterable[str]] = None) -> list[tuple[int, str, dict]]:
        """(sequence number, member name, record event) for every record any member logged."""
        names = list(self.members) if names is None else list(names)
        out = []
        for name in names:
            for event in self.members[name].records():
                out.append((int(event["v"][1:]), name, event))
        return out

    def wait_all_consumed_and_committed(self, timeout_s: float = WAIT_S) -> dict[int, int]:
        """Until every produced value was logged by some member and the group's committed
        offsets equal the log end of every partition. Returns the committed offsets."""
        ends = self.log_ends()
        assert sum(ends.values()) == self.produced, f"log ends {ends} do not add up to {self.produced} produced records"

        from confluent_kafka import KafkaException

        admin_errors: list = []

        def done():
            seen = {seq for seq, _, _ in self.consumed()}
            if len(seen) < self.produced:
                return None
            try:
                committed = self.committed()
            except KafkaException as e:  # a slow or reconnecting admin client: ask again
                admin_errors.append(e)
                return None
            return committed if committed == ends else None

        def detail():
            seen = {seq for seq, _, _ in self.consumed()}
            missing = sorted(set(range(self.produced)) - seen)
            try:
                committed = self.committed()
            except Exception as e:
                committed = repr(e)
            errors = f"{len(admin_errors)} OffsetFetch errors, last {admin_errors[-1]!r}\n" if admin_errors else ""
            return (f"{errors}missing {len(missing)} values (first {missing[:10]}); committed {committed}, log ends {ends}\n"
                    f"members:\n{self.describe_members(self.members)}")

        return wait_until(
            f"all {self.produced} records consumed and committed up to the log ends", done, timeout_s, 0.2, detail
        )

    # --- checks ----------------------------------------------------------------------------
    def check_exactly_once(self, seqs: range, owners: Optional[dict[int, str]] = None) -> None:
        """Every value in `seqs` was consumed exactly once (by the owner of its partition)."""
        consumed = [(seq, name, e) for seq, name, e in self.consumed() if seq in seqs]
        counts = collections.Counter(seq for seq, _, _ in consumed)
        missing = sorted(set(seqs) - set(counts))
        duplicated = sorted(seq for seq, c in counts.items() if c > 1)
        assert not missing, f"{len(missing)} of {len(seqs)} records never consumed, e.g. {['v%d' % n for n in missing[:10]]}"
        assert not duplicated, (
            f"{len(duplicated)} records consumed more than once with no crash and no commit in flight "
            f"(a new owner did not start at the committed offset), e.g. "
            f"{[(s, n, e['p'], e['o']) for s, n, e in consumed if s in duplicated[:5]]}"
        )
        if owners is not None:
            strays = [(seq, name, e["p"]) for seq, name, e in consumed if owners[e["p"]] != name]
            assert not strays, f"records read by a member that does not own their partition: {strays[:10]} (owners {owners})"

    def check_records_intact(self) -> None:
        """Every consumed value sits at one (partition, offset) and has its own key."""
        where: dict[int, set] = collections.defaultdict(set)
        for seq, _, e in self.consumed():
            assert e["k"] == f"k{seq}", f"value v{seq} came with key {e['k']!r}"
            where[seq].add((e["p"], e["o"]))
        moved = {seq: places for seq, places in where.items() if len(places) > 1}
        assert not moved, f"the same record seen at different positions: {dict(list(moved.items())[:5])}"


# =============================================================================================
# Fixture and scenarios shared by the confluent-kafka and kafka-python test files
# =============================================================================================

@pytest.fixture
def group_scenario(broker_factory, tmp_path):
    """`group_scenario(lib, broker, topic, partitions, strategy=None)` → a GroupScenario whose
    members are SIGKILLed at teardown, before the brokers stop (this fixture depends on
    broker_factory, so it is torn down first)."""
    made: list[GroupScenario] = []

    def make(lib, broker, topic, partitions, strategy=None, group=None):
        scenario = GroupScenario(lib, broker.bootstrap, topic, partitions, group or f"{topic}-group",
                                 tmp_path, strategy=strategy)
        made.append(scenario)
        return scenario

    yield make
    for scenario in made:
        scenario.kill_all()


PARTITIONS = 6


def make_topic(broker, prefix: str) -> str:
    """A fresh topic with PARTITIONS partitions."""
    from clients import create_topic, unique_topic

    topic = unique_topic(prefix)
    create_topic(broker.bootstrap, topic, PARTITIONS)
    return topic


def phase(s: GroupScenario, names: Iterable[str], count: int) -> dict[int, str]:
    """Wait for `names` to settle on a complete disjoint assignment, produce `count` records,
    and check each was consumed exactly once, by its partition's owner, and committed."""
    owners = s.wait_assignments(names)
    seqs = s.produce(count)
    s.wait_all_consumed_and_committed()
    s.check_exactly_once(seqs, owners)
    return owners


def broker_state(s: GroupScenario) -> str:
    return s.broker_group().state.name


def wait_state(s: GroupScenario, state: str, timeout_s: float = 10.0) -> None:
    """Until DescribeGroups reports `state` (e.g. EMPTY once the last member's LeaveGroup is in)."""
    wait_until(f"group {s.group} in state {state}", lambda: broker_state(s) == state, timeout_s,
               detail=lambda: f"state: {broker_state(s)}")


def static_member_restart(s: GroupScenario) -> None:
    """Static membership (KIP-345): a static member that is SIGKILLed and restarted with the
    same group.instance.id within the session timeout gets its partitions back and nobody
    else rebalances; once it is gone for good, the others take over after the session timeout."""
    instance = {n: f"{s.group}-instance-{n}" for n in "abc"}
    for n in "abc":
        s.start(n, instance_id=instance[n])
    phase(s, "abc", 300)
    before = {n: s.members[n].assignment() for n in "abc"}
    described = s.broker_group()
    ids_before = {m.group_instance_id: m.member_id for m in described.members}
    assert set(ids_before) == set(instance.values()), f"instance ids in DescribeGroups: {sorted(ids_before, key=str)}"
    others_before = {n: len(s.members[n].rebalance_events()) for n in "bc"}

    s.members["a"].kill()
    killed_at = time.monotonic()
    s.start("a2", instance_id=instance["a"])
    wait_until(
        "the restarted static member owns partitions again",
        lambda: s.members["a2"].assignment(),
        timeout_s=30,
        detail=lambda: s.describe_members(["a2", "b", "c"]),
    )
    assert s.members["a2"].assignment() == before["a"], (
        f"restarted static member got {sorted(s.members['a2'].assignment())}, had {sorted(before['a'])}"
    )
    # Past the old member's session timeout: a broker that kept the old member id (and expired
    # it now) or that treated the restarted one as new would have made b and c rebalance.
    time.sleep(max(0.0, killed_at + SESSION_TIMEOUT_MS / 1000 + 2.0 - time.monotonic()))
    others_after = {n: len(s.members[n].rebalance_events()) for n in "bc"}
    assert others_after == others_before, (
        f"b and c saw rebalance events when static member a restarted: before {others_before}, after {others_after}\n"
        + s.describe_members(["a2", "b", "c"])
    )
    after = {"a": s.members["a2"].assignment(), "b": s.members["b"].assignment(), "c": s.members["c"].assignment()}
    assert after == before, f"assignments changed: before {before}, after {after}"
    described = s.broker_group()
    assert described.state.name == "STABLE", f"group state {described.state} after a static member restart"
    ids_after = {m.group_instance_id: m.member_id for m in described.members}
    assert set(ids_after) == set(instance.values()), f"members after the restart: {ids_after}"
    assert ids_after[instance["a"]] != ids_before[instance["a"]], "the restarted member kept its old member id"
    for n in "bc":
        assert ids_after[instance[n]] == ids_before[instance[n]], f"member {n} got a new member id"

    # The restarted member resumes from the committed offsets: nothing of the first batch again.
    owners = s.wait_assignments(["a2", "b", "c"])
    seqs = s.produce(300)
    s.wait_all_consumed_and_committed()
    s.check_exactly_once(seqs, owners)
    s.check_exactly_once(range(s.produced))

    # Gone for good: its session times out and b and c take its partitions.
    s.members["a2"].kill()
    killed_at = time.monotonic()
    s.wait_assignments("bc")
    took = time.monotonic() - killed_at
    assert took >= (SESSION_TIMEOUT_MS - HEARTBEAT_INTERVAL_MS) / 1000 - 1.0, (
        f"the killed static member's partitions moved {took:.1f} s after the kill, before its session timed out"
    )
    phase(s, "bc", 200)
    s.check_exactly_once(range(s.produced))
    s.check_records_intact()
    s.stop_all()


if __name__ == "__main__":
    sys.exit(_member_main(json.loads(sys.argv[1])))
