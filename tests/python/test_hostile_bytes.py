"""Garbage on some connections must not disturb the broker or its well-behaved clients."""

import os
import random
import socket
import struct
import threading
import time

from confluent_kafka import Producer

import kafka_wire as wire
from clients import Delivery, consume_partitions, create_topic, producer_config, unique_topic, watermarks

GOOD_CLIENT_BATCHES_MAX = 400
GOOD_CLIENT_BATCH = 50
IDLE_CONNECTIONS = 50
RESPONSE_TIMEOUT_S = 5.0


def seed() -> int:
    return int(os.environ.get("RUNNEL_TEST_SEED", "1234567"))


class GoodClient(threading.Thread):
    """Produces batches with librdkafka until told to stop (bounded in batches)."""

    def __init__(self, bootstrap, topic):
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.stop_requested = threading.Event()
        self.delivery = Delivery()
        self.sent = 0
        self.error = None

    def run(self):
        try:
            producer = Producer(producer_config(self.bootstrap, **{"linger.ms": 2}))
            for batch in range(GOOD_CLIENT_BATCHES_MAX):
                if self.stop_requested.is_set():
                    break
                for i in range(GOOD_CLIENT_BATCH):
                    producer.produce(self.topic, value=f"good-{self.sent}".encode(), partition=0,
                                     on_delivery=self.delivery.callback)
                    self.sent += 1
                remaining = producer.flush(30)
                assert remaining == 0, f"good client: {remaining} records unacknowledged after 30 s"
                time.sleep(0.01)
        except BaseException as e:  # reported by the test thread
            self.error = e


def exchange(broker, data: bytes, close_after_send=False):
    sock = wire.connect(broker.kafka_address)
    try:
        if not wire.send_quietly(sock, data):
            return "closed", None
        if close_after_send:
            return "sent", None
        return wire.outcome_after(sock, RESPONSE_TIMEOUT_S)
    finally:
        sock.close()


def test_garbage_connections_do_not_disturb_good_clients(broker):
    rng = random.Random(seed())
    topic = unique_topic("hostile")
    create_topic(broker.bootstrap, topic, 1)
    good = GoodClient(broker.bootstrap, topic)
    good.start()
    idle = [wire.connect(broker.kafka_address) for _ in range(IDLE_CONNECTIONS)]
    problems = []
    try:
        # Random bytes, then close.
        for _ in range(20):
            exchange(broker, rng.randbytes(rng.randint(1, 65536)), close_after_send=True)

        # Random bodies in well-formed frames: answered or closed, never a hang.
        for i in range(50):
            # Not Fetch (1): a random body that happens to decode is allowed to long-poll.
            api_key = rng.choice([k for k in range(0, 80) if k != 1])
            body = struct.pack(">hhi", api_key, rng.randint(-2, 20), i) + rng.randbytes(rng.randint(0, 2000))
            outcome, _ = exchange(broker, struct.pack(">i", len(body)) + body)
            if outcome == "timeout":
                problems.append(f"framed random request #{i} (seed {seed()}): no answer and no close in {RESPONSE_TIMEOUT_S} s")

        # A size prefix of 2 GiB: refused by closing, not by allocating and waiting.
        outcome, _ = exchange(broker, struct.pack(">i", 0x7FFFFFFF) + b"\x00\x12\x00\x00" + b"\x00" * 100)
        if outcome != "closed":
            problems.append(f"2 GiB size prefix: {outcome}, wanted the connection closed")

        # Negative sizes.
        for size in (-1, -2**31):
            outcome, _ = exchange(broker, struct.pack(">i", size) + b"\x00" * 16)
            if outcome != "closed":
                problems.append(f"size prefix {size}: {outcome}, wanted the connection closed")

        # A truncated frame, then close, many times over.
        metadata_v1 = wire.request(wire.API_METADATA, 1, 7, struct.pack(">i", -1))
        for cut in range(1, len(metadata_v1), max(1, len(metadata_v1) // 10)):
            exchange(broker, metadata_v1[:cut], close_after_send=True)

        # An unknown API key: answered or closed, never a hang.
        outcome, _ = exchange(broker, wire.request(32000, 0, 11))
        if outcome == "timeout":
            problems.append(f"unknown api key 32000: no answer and no close in {RESPONSE_TIMEOUT_S} s")
    finally:
        time.sleep(0.5)
        good.stop_requested.set()
        good.join(timeout=90)
        for sock in idle:
            sock.close()

    assert not good.is_alive(), "good client still running 90 s after being told to stop"
    assert good.error is None, f"good client failed: {good.error!r}"
    assert not problems, "hostile input handled badly:\n" + "\n".join(problems)
    assert broker.health() == 200, "broker unhealthy after hostile input"
    assert good.sent > 0 and not good.delivery.failed, f"good client: {len(good.delivery.failed)} failed, e.g. {good.delivery.failed[:3]}"
    records = consume_partitions(broker.bootstrap, topic, [0])[0]
    assert [r.value for r in records] == [f"good-{i}".encode() for i in range(good.sent)], "good client's records differ"

    # And a well-formed request on a fresh connection still gets a normal answer.
    sock = wire.connect(broker.kafka_address)
    try:
        sock.sendall(wire.api_versions_request(42, version=3))
        frame = wire.read_response(sock, RESPONSE_TIMEOUT_S)
        reader = wire.Reader(frame)
        assert reader.take(">i") == 42 and reader.take(">h") == 0, "ApiVersions v3 after hostile input failed"
    finally:
        sock.close()


def test_api_versions_unsupported_version_answers_in_v0_format(broker):
    sock = wire.connect(broker.kafka_address)
    try:
        sock.sendall(wire.api_versions_request(1234, version=99))
        frame = wire.read_response(sock, RESPONSE_TIMEOUT_S)
    finally:
        sock.close()
    reader = wire.Reader(frame)
    correlation_id = reader.take(">i")
    assert correlation_id == 1234, f"correlation id {correlation_id}, wanted 1234"
    error_code = reader.take(">h")
    assert error_code == wire.UNSUPPORTED_VERSION, f"ApiVersions v99: error {error_code}, wanted UNSUPPORTED_VERSION (35)"
    # v0 body: [api_key, min, max] with an int32 count; Kafka lists at least ApiVersions itself
    # so the client can retry at a version the broker speaks.
    count = reader.take(">i")
    assert 0 <= count <= 1000 and reader.remaining() == count * 6, (
        f"not a v0 ApiVersions body: count {count}, {reader.remaining()} bytes left"
    )
    ranges = {}
    for _ in range(count):
        key, lo, hi = reader.take(">hhh")
        ranges[key] = (lo, hi)
    assert wire.API_VERSIONS in ranges, f"UNSUPPORTED_VERSION answer does not list ApiVersions' range: {ranges}"
    assert ranges[wire.API_VERSIONS][0] == 0 and ranges[wire.API_VERSIONS][1] >= 3, f"ApiVersions range {ranges[wire.API_VERSIONS]}"


def test_produce_v2_is_refused(broker):
    topic = unique_topic("v2")
    create_topic(broker.bootstrap, topic, 1)
    message_set = wire.legacy_message_set(b"key", b"legacy value", int(time.time() * 1000))
    sock = wire.connect(broker.kafka_address)
    try:
        sock.sendall(wire.produce_v2_request(77, topic, 0, message_set))
        outcome, frame = wire.outcome_after(sock, RESPONSE_TIMEOUT_S)
    finally:
        sock.close()
    assert outcome in ("response", "closed"), f"Produce v2: {outcome}, wanted UNSUPPORTED_VERSION or a closed connection"
    if outcome == "response":
        reader = wire.Reader(frame)
        assert reader.take(">i") == 77, "correlation id"
        codes = []
        for _ in range(reader.take(">i")):
            reader.string()
            for _ in range(reader.take(">i")):
                _partition, error_code, _base, _append_time = reader.take(">ihqq")
                codes.append(error_code)
        assert codes and all(c == wire.UNSUPPORTED_VERSION for c in codes), (
            f"Produce v2 answered with partition errors {codes}, wanted UNSUPPORTED_VERSION (35)"
        )
    assert watermarks(broker.bootstrap, topic, 0) == (0, 0), "a refused Produce v2 wrote records"
    assert broker.health() == 200


def test_many_connections_opened_and_dropped(broker):
    """Connections that connect and vanish (no bytes, or half a header) leak nothing visible."""
    for round_ in range(5):
        socks = [wire.connect(broker.kafka_address) for _ in range(40)]
        for i, sock in enumerate(socks):
            if i % 2:
                wire.send_quietly(sock, b"\x00\x00")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
            sock.close()
    assert broker.health() == 200
    sock = wire.connect(broker.kafka_address)
    try:
        sock.sendall(wire.api_versions_request(5, version=0))
        reader = wire.Reader(wire.read_response(sock, RESPONSE_TIMEOUT_S))
        assert reader.take(">i") == 5 and reader.take(">h") == 0, "ApiVersions v0 after connection churn failed"
    finally:
        sock.close()
