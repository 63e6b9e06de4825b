"""Idempotent producers (InitProducerId + per-partition sequence checks).

librdkafka with enable.idempotence retries every batch whose response it did not see. When a
connection dies after the broker appended a batch but before the client read the answer, the
retry must be recognised as a duplicate: the log holds every record exactly once.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time

from confluent_kafka import Producer

from clients import Delivery, consume_partitions, create_topic, flush_all, produce_or_wait, producer_config, unique_topic
from runnel_harness import free_ports

PARTITIONS = 3
RECORDS = 30_000


class DroppingProxy:
    """A TCP proxy that cuts every connection it carries at seeded random moments."""

    def __init__(self, target: tuple[str, int], port: int, seed: int):
        self.target = target
        self.port = port
        self.rng = random.Random(seed)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.2)
        self.stop = threading.Event()
        self.calm = threading.Event()  # set: keep forwarding, stop cutting
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.drops = 0
        self.threads = [threading.Thread(target=self._accept, daemon=True), threading.Thread(target=self._chaos, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket):
        try:
            while not self.stop.is_set():
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _chaos(self):
        # Cuts come often enough to hit requests in flight, but not so often that a client
        # on a loaded machine never finishes connecting between two of them.
        while not self.stop.wait(self.rng.uniform(float(os.environ.get("CHAOS_LO","0.3")), float(os.environ.get("CHAOS_HI","1.2")))):
            if self.calm.is_set():
                continue
            with self.lock:
                victims, self.sockets = self.sockets, []
            if victims:
                self.drops += 1
            for s in victims:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.close()
                except OSError:
                    pass


def produce_numbered(producer: Producer, topic: str, count: int, delivery: Delivery, pause_every: int = 0):
    for i in range(count):
        produce_or_wait(producer, topic, key=str(i % 97).encode(), value=str(i).encode(), on_delivery=delivery.callback)
        if i % 500 == 0:
            producer.poll(0)
            if pause_every and i % pause_every == 0:
                time.sleep(0.05)


def assert_exactly_once(bootstrap: str, topic: str, count: int, delivery: Delivery):
    assert not delivery.failed, f"idempotent producer reported failures: {delivery.failed[:3]}"
    assert len(delivery.acked) == count
    records = consume_partitions(bootstrap, topic, range(PARTITIONS))
    values = [int(r.value) for part in records.values() for r in part]
    duplicates = len(values) - len(set(values))
    assert duplicates == 0, f"{duplicates} duplicated records in the log"
    assert sorted(values) == list(range(count)), "records lost"
    for part in records.values():
        per_key: dict[bytes, int] = {}
        for r in part:
            assert per_key.get(r.key, -1) < int(r.value), f"order broken for key {r.key}"
            per_key[r.key] = int(r.value)


def test_connection_drops_cause_no_duplicates(broker_factory):
    proxy_port = free_ports(1)[0]
    broker = broker_factory(extra_args=["--advertised-listener", f"127.0.0.1:{proxy_port}"])
    seed = int(os.environ.get("RUNNEL_TEST_SEED", "7"))
    proxy = DroppingProxy(broker.kafka_address, proxy_port, seed=seed)
    try:
        bootstrap = f"127.0.0.1:{proxy_port}"
        topic = unique_topic("idempotent-drops")
        create_topic(bootstrap, topic, PARTITIONS)
        # librdkafka backs off reconnecting up to 10 s after repeated drops; keep it short so
        # the run measures the broker's deduplication, not the client's backoff.
        producer = Producer(
            producer_config(
                bootstrap,
                **{"enable.idempotence": True, "message.timeout.ms": 120000, "reconnect.backoff.max.ms": 300},
            )
        )
        delivery = Delivery()
        # Paced over ~3 s so several cuts land while batches are in flight.
        produce_numbered(producer, topic, RECORDS, delivery, pause_every=500)
        flush_all(producer, 120)
        assert proxy.drops >= 2, f"seed {seed}: the proxy cut {proxy.drops} connections; the test proved little"
        # The check reads through the proxy too (it is the advertised address): no more cuts.
        proxy.calm.set()
        assert_exactly_once(bootstrap, topic, RECORDS, delivery)
    finally:
        proxy.close()


def test_idempotent_producer_across_a_broker_restart(broker_factory):
    broker = broker_factory()
    topic = unique_topic("idempotent-restart")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    producer = Producer(producer_config(broker.bootstrap, **{"enable.idempotence": True, "message.timeout.ms": 120000}))
    delivery = Delivery()
    produce_numbered(producer, topic, RECORDS // 2, delivery)
    producer.flush(0.2)  # leave some in flight
    broker.kill()
    broker.start()
    produce_numbered(producer, topic, RECORDS // 2, Delivery())  # values repeat: a second range
    flush_all(producer, 120)
    # The first half must be exactly once; the second half is another numbered run.
    records = consume_partitions(broker.bootstrap, topic, range(PARTITIONS))
    values = [int(r.value) for part in records.values() for r in part]
    assert len(values) == RECORDS, f"expected {RECORDS} records (two runs of {RECORDS // 2}), found {len(values)}"
    from collections import Counter

    counts = Counter(values)
    assert all(c == 2 for c in counts.values()) and len(counts) == RECORDS // 2, "a record was lost or duplicated"
    assert not delivery.failed, f"failures: {delivery.failed[:3]}"
