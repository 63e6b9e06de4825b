"""`runnel group list|describe|reset-offsets|delete` against a broker with a real consumer group
(a confluent-kafka member process from group_workers.py)."""

from __future__ import annotations

import datetime
import subprocess
import time

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

from clients import create_topic, unique_topic
from group_workers import GROUP_BROKER_SETS, group_scenario, wait_state  # noqa: F401  (a fixture)

PARTITIONS = 3
PER_PARTITION = 10
STEP_MS = 1000


def runnel(runnel_bin, broker, *args, check=True):
    env = {"RUNNEL_BROKERS": broker.bootstrap, "RUNNEL_ADMIN": broker.admin_url, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(runnel_bin), *args], capture_output=True, text=True, timeout=60, env=env)
    if check:
        assert result.returncode == 0, f"runnel {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return result


def one_error(result, *needles):
    """A refused command: non-zero exit, exactly one `error:` line, naming each needle."""
    assert result.returncode != 0, f"expected a failure, got exit 0: {result.stdout}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"one error line expected, got: {result.stderr!r}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def describe(runnel_bin, broker, group):
    """`group describe` → (header fields, {(topic, partition): row fields})."""
    lines = runnel(runnel_bin, broker, "group", "describe", group).stdout.splitlines()
    header = dict(field.split(": ", 1) for field in lines[0].split("\t"))
    columns = lines[1].split()
    assert columns == ["TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID", "HOST", "CLIENT-ID"]
    rows = {}
    for line in lines[2:]:
        row = dict(zip(columns, line.split()))
        rows[(row["TOPIC"], int(row["PARTITION"]))] = row
    return header, rows


def offsets_of(rows, topic, field="CURRENT-OFFSET"):
    return {p: int(rows[(topic, p)][field]) for p in range(PARTITIONS)}


def reset(runnel_bin, broker, group, topic, *target, dry_run=False):
    """Runs reset-offsets and returns the NEW-OFFSET table it printed, as partition → offset."""
    args = ["group", "reset-offsets", group, "--topic", topic, *target] + (["--dry-run"] if dry_run else [])
    lines = runnel(runnel_bin, broker, *args).stdout.splitlines()
    assert lines[0].split() == ["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"]
    table = {}
    for line in lines[1:]:
        g, t, p, offset = line.split()
        assert (g, t) == (group, topic), line
        table[int(p)] = int(offset)
    return table


def iso(ms, zone="Z"):
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    if zone == "Z":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    if zone == "":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}"
    shifted = moment.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    return shifted.strftime("%Y-%m-%dT%H:%M:%S") + "+02:00"


def test_group_cli(runnel_bin, broker_factory, group_scenario):
    broker = broker_factory(sets=GROUP_BROKER_SETS)
    topic = unique_topic("grp-cli")
    # retention.ms=-1: the records carry timestamps an hour old.
    create_topic(broker.bootstrap, topic, PARTITIONS, config={"retention.ms": "-1"})
    s = group_scenario("confluent", broker, topic, PARTITIONS)
    group = s.group
    # Record n goes to partition n % 3 at offset n // 3, stamped base + offset seconds.
    base = (int(time.time()) - 3600) * 1000
    s.produce(PARTITIONS * PER_PARTITION, partition_of=lambda n: n % PARTITIONS,
              timestamp_of=lambda n: base + (n // PARTITIONS) * STEP_MS)
    assert group not in runnel(runnel_bin, broker, "group", "list").stdout.split()

    # --- an active group ---------------------------------------------------------------------
    s.start("a")
    s.wait_assignments(["a"])
    s.wait_all_consumed_and_committed()
    listed = runnel(runnel_bin, broker, "group", "list", "--brokers", broker.bootstrap).stdout.splitlines()
    assert group in listed
    assert f"{group}\tStable" in runnel(runnel_bin, broker, "group", "list", "--state").stdout.splitlines()

    header, rows = describe(runnel_bin, broker, group)
    assert header == {"Group": group, "State": "Stable", "Protocol": "consumer/range", "Members": "1"}, header
    assert set(rows) == {(topic, p) for p in range(PARTITIONS)}, rows
    member_id = s.members["a"].events("assignment")[-1]["member_id"]
    for p in range(PARTITIONS):
        row = rows[(topic, p)]
        assert (row["CURRENT-OFFSET"], row["LOG-END-OFFSET"], row["LAG"]) == (str(PER_PARTITION), str(PER_PARTITION), "0"), row
        assert row["CONSUMER-ID"] == member_id and row["CLIENT-ID"] == "confluent-a", row

    # Offsets of a group with members cannot be reset, and the group cannot be deleted.
    committed = s.committed()
    one_error(runnel(runnel_bin, broker, "group", "reset-offsets", group, "--topic", topic, "--to-earliest", check=False),
              "inactive", "Stable")
    one_error(runnel(runnel_bin, broker, "group", "delete", group, check=False), "NON_EMPTY_GROUP")
    # The broker itself refuses an admin commit (generation -1, no member) while members exist.
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 0)])
    try:
        result = s.admin.alter_consumer_group_offsets([request], request_timeout=10)[group].result(timeout=15)
        errors = [tp.error for tp in result.topic_partitions if tp.error is not None]
    except KafkaException as e:
        errors = [e.args[0]]
    assert errors and "UNKNOWN_MEMBER_ID" in str(errors[0]), f"admin commit to an active group: {errors}"
    assert s.committed() == committed, "a refused reset changed the committed offsets"

    # --- inactive: describe shows committed offsets and lag ------------------------------------
    s.members["a"].stop()
    wait_state(s, "EMPTY")
    s.produce(5, partition_of=lambda n: 0)  # partition 0 now ends at 15
    ends = {0: PER_PARTITION + 5, 1: PER_PARTITION, 2: PER_PARTITION}
    header, rows = describe(runnel_bin, broker, group)
    assert header["State"] == "Empty" and header["Members"] == "0", header
    assert offsets_of(rows, topic) == {p: PER_PARTITION for p in range(PARTITIONS)}
    assert offsets_of(rows, topic, "LOG-END-OFFSET") == ends
    assert offsets_of(rows, topic, "LAG") == {0: 5, 1: 0, 2: 0}
    assert all(rows[(topic, p)]["CONSUMER-ID"] == "-" for p in range(PARTITIONS))

    # --- reset-offsets --------------------------------------------------------------------------
    before = s.committed()
    assert reset(runnel_bin, broker, group, topic, "--to-earliest", dry_run=True) == {0: 0, 1: 0, 2: 0}
    assert s.committed() == before, "--dry-run committed"

    def check_reset(target, want):
        assert reset(runnel_bin, broker, group, topic, *target) == want, target
        assert s.committed() == want, f"committed offsets after reset {target}"

    check_reset(["--to-earliest"], {0: 0, 1: 0, 2: 0})
    _, rows = describe(runnel_bin, broker, group)
    assert offsets_of(rows, topic, "LAG") == ends
    check_reset(["--to-offset", "5"], {0: 5, 1: 5, 2: 5})
    check_reset(["--to-latest"], ends)
    check_reset(["--to-offset", "3"], {0: 3, 1: 3, 2: 3})
    check_reset(["--to-offset", "999"], ends)  # clamped to the log end
    # --to-datetime: the first record at or after the time (every partition has offset k at
    # base + k s; partition 0's last five records are stamped now).
    check_reset(["--to-datetime", iso(base + 5 * STEP_MS)], {0: 5, 1: 5, 2: 5})
    check_reset(["--to-datetime", iso(base + 7 * STEP_MS + 500, zone="")], {0: 8, 1: 8, 2: 8})  # no zone: UTC
    check_reset(["--to-datetime", iso(base + 2 * STEP_MS, zone="+02:00")], {0: 2, 1: 2, 2: 2})
    check_reset(["--to-datetime", "2000-01-01T00:00:00Z"], {0: 0, 1: 0, 2: 0})
    check_reset(["--to-datetime", iso(base + (PER_PARTITION + 60) * STEP_MS)], {0: PER_PARTITION, 1: PER_PARTITION, 2: PER_PARTITION})
    check_reset(["--to-datetime", "2999-01-01"], ends)  # after every record: the log end
    clash = runnel(runnel_bin, broker, "group", "reset-offsets", group, "--topic", topic, "--to-latest", "--to-earliest", check=False)
    assert clash.returncode == 2 and "cannot be used with" in clash.stderr, clash.stderr

    # A member started after a reset reads from the new offsets.
    check_reset(["--to-offset", "4"], {0: 4, 1: 4, 2: 4})
    s.start("b")
    s.wait_assignments(["b"])
    s.wait_all_consumed_and_committed()
    read = {}
    for event in s.members["b"].records():
        read.setdefault(event["p"], []).append(event["o"])
    assert read == {p: list(range(4, ends[p])) for p in range(PARTITIONS)}, f"offsets read after the reset: {read}"
    s.members["b"].stop()

    # Resetting the offsets of a group that does not exist creates it (as Kafka's tool does).
    other = f"{group}-new"
    assert reset(runnel_bin, broker, other, topic, "--to-offset", "1") == {0: 1, 1: 1, 2: 1}
    assert f"{other}\tEmpty" in runnel(runnel_bin, broker, "group", "list", "--state").stdout.splitlines()
    _, rows = describe(runnel_bin, broker, other)
    assert offsets_of(rows, topic) == {0: 1, 1: 1, 2: 1}

    # --- delete -------------------------------------------------------------------------------
    assert runnel(runnel_bin, broker, "group", "delete", group).stdout.strip() == f"Deleted group {group}."
    assert group not in runnel(runnel_bin, broker, "group", "list").stdout.split()
    assert all(offset < 0 for offset in s.committed().values()), f"offsets survived the group deletion: {s.committed()}"
    one_error(runnel(runnel_bin, broker, "group", "delete", group, check=False), "GROUP_ID_NOT_FOUND")
    one_error(runnel(runnel_bin, broker, "group", "describe", group, check=False), "does not exist")
    runnel(runnel_bin, broker, "group", "delete", other)
    assert runnel(runnel_bin, broker, "group", "list").stdout.split() == []

    # Deletions are durable.
    broker.restart()
    assert runnel(runnel_bin, broker, "group", "list").stdout.split() == []
    one_error(runnel(runnel_bin, broker, "group", "describe", group, check=False), "does not exist")
