"""Kafka transactions: transactional producers, read_committed consumers, fencing, timeouts,
and exactly-once consume-transform-produce across client and broker crashes.

Every test also checks the opposite view where it can (read_uncommitted sees the aborted
records), so a broker that ignored isolation would fail it.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from clients import consumer_config, create_topic, unique_topic

HERE = pathlib.Path(__file__).resolve().parent


def txn_producer(bootstrap: str, transactional_id: str, **overrides) -> Producer:
    config = {
        "bootstrap.servers": bootstrap,
        "broker.address.family": "v4",
        "transactional.id": transactional_id,
        "linger.ms": 5,
        "transaction.timeout.ms": 60000,
    }
    config.update(overrides)
    return Producer(config)


def read_all(bootstrap: str, topic: str, partitions: int, isolation: str, timeout_s: float = 30.0) -> list:
    """Every record a consumer with `isolation` sees, up to the end offset it is shown by
    ListOffsets (the last stable offset for read_committed), bounded in time."""
    consumer = Consumer(consumer_config(bootstrap, **{"isolation.level": isolation, "group.id": unique_topic("g")}))
    try:
        tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        ends = {}
        for tp in tps:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10, cached=False)
            ends[tp.partition] = high
        consumer.assign(tps)
        seen = []
        deadline = time.monotonic() + timeout_s
        while True:
            positions = {tp.partition: tp.offset for tp in consumer.position([TopicPartition(topic, p) for p in ends])}
            if all(ends[p] == 0 or positions[p] >= ends[p] for p in ends):
                return seen
            assert time.monotonic() < deadline, f"{isolation} consumer stuck: positions {positions}, ends {ends}"
            for msg in consumer.consume(num_messages=500, timeout=0.3):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consumer error: {msg.error()}")
                seen.append(msg.value())
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, isolation: str) -> int:
    consumer = Consumer(consumer_config(bootstrap, **{"isolation.level": isolation}))
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)[1]
    finally:
        consumer.close()


def test_commit_and_abort_are_seen_by_isolation_level(broker):
    topic = unique_topic("txn")
    create_topic(broker.bootstrap, topic, partitions=2)
    producer = txn_producer(broker.bootstrap, unique_topic("tid"))
    producer.init_transactions(30)
    for round_ in range(6):
        producer.begin_transaction()
        for i in range(10):
            producer.produce(topic, value=f"r{round_}-{i}".encode(), partition=i % 2)
        if round_ % 3 == 2:
            # Abort purges records not sent yet: flush so the aborted ones reach the log.
            producer.flush(10)
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
    committed = read_all(broker.bootstrap, topic, 2, "read_committed")
    uncommitted = read_all(broker.bootstrap, topic, 2, "read_uncommitted")
    expected = {f"r{r}-{i}".encode() for r in range(6) if r % 3 != 2 for i in range(10)}
    assert sorted(committed) == sorted(expected)
    assert len(uncommitted) == 60, "read_uncommitted sees the aborted records too"
    assert b"r2-0" in uncommitted and b"r2-0" not in committed


def test_open_transaction_blocks_read_committed_at_the_lso(broker):
    topic = unique_topic("lso")
    create_topic(broker.bootstrap, topic)
    plain = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    plain.produce(topic, value=b"before")
    plain.flush(10)
    producer = txn_producer(broker.bootstrap, unique_topic("tid"))
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, value=f"open-{i}".encode())
    producer.flush(10)
    plain.produce(topic, value=b"after")
    plain.flush(10)
    # The LSO stops at the open transaction's first offset (1); the log goes on to 7.
    assert end_offsets(broker.bootstrap, topic, "read_committed") == 1
    assert end_offsets(broker.bootstrap, topic, "read_uncommitted") == 7
    committed_consumer = Consumer(
        consumer_config(broker.bootstrap, **{"isolation.level": "read_committed", "group.id": unique_topic("g")})
    )
    committed_consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for msg in committed_consumer.consume(num_messages=100, timeout=0.2):
            if msg.error() is None:
                seen.append(msg.value())
    assert seen == [b"before"], "nothing at or past the open transaction is visible"
    producer.abort_transaction(30)
    deadline = time.monotonic() + 10
    while b"after" not in seen and time.monotonic() < deadline:
        for msg in committed_consumer.consume(num_messages=100, timeout=0.2):
            if msg.error() is None:
                seen.append(msg.value())
    committed_consumer.close()
    assert seen == [b"before", b"after"], "aborted records skipped, later ones visible once the LSO moves"
    assert len(read_all(broker.bootstrap, topic, 1, "read_uncommitted")) == 7


def test_second_producer_fences_the_first(broker):
    topic = unique_topic("fence")
    create_topic(broker.bootstrap, topic)
    tid = unique_topic("tid")
    first = txn_producer(broker.bootstrap, tid)
    first.init_transactions(30)
    first.begin_transaction()
    first.produce(topic, value=b"zombie")
    first.flush(10)
    second = txn_producer(broker.bootstrap, tid)
    second.init_transactions(30)  # aborts the first producer's transaction
    second.begin_transaction()
    second.produce(topic, value=b"winner")
    second.commit_transaction(30)
    with pytest.raises(KafkaException) as raised:
        first.produce(topic, value=b"zombie-2")
        first.commit_transaction(10)
    error = raised.value.args[0]
    assert error.fatal() or error.txn_requires_abort(), f"zombie must be fenced, got {error}"
    assert "fenced" in str(error).lower() or error.code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    ), str(error)
    assert read_all(broker.bootstrap, topic, 1, "read_committed") == [b"winner"]


def test_broker_aborts_a_timed_out_transaction(broker_factory):
    broker = broker_factory(sets={"transaction.abort.timed.out.transaction.cleanup.interval.ms": "200"})
    topic = unique_topic("timeout")
    create_topic(broker.bootstrap, topic)
    producer = txn_producer(broker.bootstrap, unique_topic("tid"), **{"transaction.timeout.ms": 1500})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"abandoned")
    producer.flush(10)
    assert end_offsets(broker.bootstrap, topic, "read_committed") == 0
    plain = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    plain.produce(topic, value=b"later")
    plain.flush(10)
    deadline = time.monotonic() + 15
    while end_offsets(broker.bootstrap, topic, "read_committed") == 0:
        assert time.monotonic() < deadline, "the broker never aborted the timed-out transaction"
        time.sleep(0.2)
    assert read_all(broker.bootstrap, topic, 1, "read_committed") == [b"later"]
    # The abandoned producer was fenced by the epoch bump: committing now fails.
    with pytest.raises(KafkaException):
        producer.commit_transaction(10)


def test_transaction_timeout_above_the_maximum_is_refused(broker_factory):
    broker = broker_factory(sets={"transaction.max.timeout.ms": "10000"})
    producer = txn_producer(broker.bootstrap, unique_topic("tid"), **{"transaction.timeout.ms": 20000})
    with pytest.raises(KafkaException) as raised:
        producer.init_transactions(10)
    assert raised.value.args[0].code() == KafkaError.INVALID_TRANSACTION_TIMEOUT


def test_broker_crash_with_a_transaction_in_flight(broker_factory):
    broker = broker_factory()
    topic = unique_topic("crash")
    create_topic(broker.bootstrap, topic, partitions=2)
    tid = unique_topic("tid")
    producer = txn_producer(broker.bootstrap, tid)
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(20):
        producer.produce(topic, value=f"committed-{i}".encode(), partition=i % 2)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(20):
        producer.produce(topic, value=f"inflight-{i}".encode(), partition=i % 2)
    producer.flush(10)
    broker.kill()
    broker.start()
    # The open transaction survived the crash: it still holds back the LSO.
    assert sorted(read_all(broker.bootstrap, topic, 2, "read_committed")) == sorted(
        f"committed-{i}".encode() for i in range(20)
    )
    ends = [end_offsets_p(broker.bootstrap, topic, p) for p in range(2)]
    assert ends == [11, 11], f"LSO per partition after restart (10 records + commit marker): {ends}"
    # A new producer with the same id aborts it (and fences the old one).
    successor = txn_producer(broker.bootstrap, tid)
    successor.init_transactions(30)
    successor.begin_transaction()
    successor.produce(topic, value=b"successor", partition=0)
    successor.commit_transaction(30)
    committed = read_all(broker.bootstrap, topic, 2, "read_committed")
    assert sorted(committed) == sorted([f"committed-{i}".encode() for i in range(20)] + [b"successor"])
    assert len(read_all(broker.bootstrap, topic, 2, "read_uncommitted")) == 41
    # And again after a clean restart: the aborted index was persisted.
    broker.restart()
    assert sorted(read_all(broker.bootstrap, topic, 2, "read_committed")) == sorted(committed)


def end_offsets_p(bootstrap: str, topic: str, partition: int) -> int:
    consumer = Consumer(consumer_config(bootstrap, **{"isolation.level": "read_committed"}))
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)[1]
    finally:
        consumer.close()


def committed_count(bootstrap: str, topic: str) -> int:
    return len(read_all(bootstrap, topic, 1, "read_committed"))


def start_loop(broker, input_topic, output_topic, group, tid, log_path):
    log = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, str(HERE / "txn_loop.py"), broker.bootstrap, input_topic, output_topic, group, tid],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_consume_transform_produce_is_exactly_once_across_a_client_crash(broker_factory, tmp_path):
    broker = broker_factory(sets={"group.initial.rebalance.delay.ms": "0"})
    input_topic, output_topic = unique_topic("in"), unique_topic("out")
    create_topic(broker.bootstrap, input_topic, partitions=3)
    create_topic(broker.bootstrap, output_topic, partitions=1)
    inputs = [f"value-{i}".encode() for i in range(600)]
    plain = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4", "linger.ms": 5})
    for i, value in enumerate(inputs):
        plain.produce(input_topic, value=value, partition=i % 3)
    assert plain.flush(30) == 0
    group, tid = unique_topic("loop"), unique_topic("loop-tid")
    loop = start_loop(broker, input_topic, output_topic, group, tid, tmp_path / "loop.log")
    try:
        deadline = time.monotonic() + 60
        while committed_count(broker.bootstrap, output_topic) < 200:
            assert loop.poll() is None, (tmp_path / "loop.log").read_text()
            assert time.monotonic() < deadline, "the loop made no progress"
            time.sleep(0.3)
        loop.send_signal(signal.SIGKILL)  # mid-way, most likely inside a transaction
        loop.wait(10)
        loop = start_loop(broker, input_topic, output_topic, group, tid, tmp_path / "loop.log")
        deadline = time.monotonic() + 90
        while committed_count(broker.bootstrap, output_topic) < len(inputs):
            assert loop.poll() is None, (tmp_path / "loop.log").read_text()
            assert time.monotonic() < deadline, "the restarted loop did not finish the input"
            time.sleep(0.5)
        time.sleep(2)  # anything extra (a duplicate) would show up now
    finally:
        loop.send_signal(signal.SIGKILL)
        loop.wait(10)
    committed = read_all(broker.bootstrap, output_topic, 1, "read_committed")
    assert sorted(committed) == sorted(inputs), (
        f"{len(committed)} committed outputs for {len(inputs)} inputs; "
        f"duplicates: {len(committed) - len(set(committed))}"
    )
    uncommitted = read_all(broker.bootstrap, output_topic, 1, "read_uncommitted")
    assert len(uncommitted) > len(inputs), "aborted transactions left records only read_committed hides"


def test_kafka_python_transactional_producer(broker):
    from kafka import KafkaProducer

    topic = unique_topic("kp")
    create_topic(broker.bootstrap, topic)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=unique_topic("kp-tid"))
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(topic, b"kept-1")
    producer.send(topic, b"kept-2")
    producer.commit_transaction()
    producer.begin_transaction()
    producer.send(topic, b"dropped")
    producer.flush()
    producer.abort_transaction()
    producer.close()
    assert read_all(broker.bootstrap, topic, 1, "read_committed") == [b"kept-1", b"kept-2"]
    assert read_all(broker.bootstrap, topic, 1, "read_uncommitted") == [b"kept-1", b"kept-2", b"dropped"]


def test_transaction_open_across_a_broker_crash_can_still_commit(broker_factory):
    broker = broker_factory()
    topic = unique_topic("crash-commit")
    create_topic(broker.bootstrap, topic)
    producer = txn_producer(broker.bootstrap, unique_topic("tid"))
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=f"survivor-{i}".encode())
    producer.flush(10)
    broker.kill()
    broker.start()
    assert read_all(broker.bootstrap, topic, 1, "read_committed") == [], "still open after the crash"
    producer.commit_transaction(60)
    assert read_all(broker.bootstrap, topic, 1, "read_committed") == [f"survivor-{i}".encode() for i in range(10)]


def test_kafkajs_transactional_producer(broker):
    import shutil

    modules = pathlib.Path(
        os.environ.get("RUNNEL_NODE_MODULES", pathlib.Path.home() / ".cache/runnel/node/node_modules")
    )
    if shutil.which("node") is None or not (modules / "kafkajs").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node or kafkajs missing in CI: tests/run.sh should have installed them")
        pytest.skip("node or kafkajs not installed (tests/run.sh installs them)")
    topic = unique_topic("kjs")
    create_topic(broker.bootstrap, topic)
    script = HERE.parent / "node" / "kafkajs_transactions.js"
    result = subprocess.run(
        ["node", str(script), broker.bootstrap, topic, unique_topic("kjs-tid")],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, NODE_PATH=str(modules)),
    )
    assert result.returncode == 0, f"kafkajs failed: {result.stderr}"
    assert read_all(broker.bootstrap, topic, 1, "read_committed") == [b"js-kept-1", b"js-kept-2"]
    assert read_all(broker.bootstrap, topic, 1, "read_uncommitted") == [b"js-kept-1", b"js-kept-2", b"js-dropped"]



def test_consume_transform_produce_is_exactly_once_across_a_broker_crash(broker_factory, tmp_path):
    broker = broker_factory(sets={"group.initial.rebalance.delay.ms": "0"})
    input_topic, output_topic = unique_topic("in"), unique_topic("out")
    create_topic(broker.bootstrap, input_topic, partitions=3)
    create_topic(broker.bootstrap, output_topic, partitions=1)
    inputs = [f"value-{i}".encode() for i in range(600)]
    plain = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4", "linger.ms": 5})
    for i, value in enumerate(inputs):
        plain.produce(input_topic, value=value, partition=i % 3)
    assert plain.flush(30) == 0
    group, tid = unique_topic("loop"), unique_topic("tid")
    loop = start_loop(broker, input_topic, output_topic, group, tid, tmp_path / "loop.log")
    try:
        deadline = time.monotonic() + 60
        while committed_count(broker.bootstrap, output_topic) < 200:
            assert loop.poll() is None, (tmp_path / "loop.log").read_text()
            assert time.monotonic() < deadline, "the loop made no progress"
            time.sleep(0.3)
        broker.kill()  # mid-transaction, most likely
        broker.start()
        progress_deadline = time.monotonic() + 20
        before = committed_count(broker.bootstrap, output_topic)
        deadline = time.monotonic() + 120
        while committed_count(broker.bootstrap, output_topic) < len(inputs):
            assert time.monotonic() < deadline, "the loop did not finish the input after the broker restart"
            if loop.poll() is not None or (
                progress_deadline and time.monotonic() > progress_deadline
                and committed_count(broker.bootstrap, output_topic) == before
            ):
                # librdkafka 2.x can block send_offsets_to_transaction forever when the group
                # coordinator went away mid-call (confluentinc/librdkafka#5456, #5511); a
                # stuck or failed loop is replaced, as a supervisor would. Its successor's
                # InitProducerId aborts whatever it left open.
                loop.send_signal(signal.SIGKILL)
                loop.wait(10)
                loop = start_loop(broker, input_topic, output_topic, group, tid, tmp_path / "loop.log")
                progress_deadline = None
            time.sleep(0.5)
        time.sleep(2)
    finally:
        loop.send_signal(signal.SIGKILL)
        loop.wait(10)
    committed = read_all(broker.bootstrap, output_topic, 1, "read_committed")
    assert sorted(committed) == sorted(inputs), (
        f"{len(committed)} committed outputs for {len(inputs)} inputs; "
        f"duplicates: {len(committed) - len(set(committed))}"
    )
