"""A consume-transform-produce loop with confluent-kafka transactions, run as a subprocess by
test_transactions.py (so it can be SIGKILLed mid-transaction).

Usage: txn_loop.py BOOTSTRAP INPUT OUTPUT GROUP TRANSACTIONAL_ID

Every third transaction is aborted on purpose; after an abort the consumer rewinds to the
group's committed offsets, so the same input is processed again in a later transaction.
Output records carry the input's value, so the test can check each input appears exactly
once among committed output.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

BATCH_MAX = 50


def rewind(consumer: Consumer) -> None:
    assignment = consumer.assignment()
    if not assignment:
        return
    for tp in consumer.committed(assignment, timeout=10):
        offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(tp.topic, tp.partition, offset))


def main() -> None:
    # `kill -USR1` prints where the loop is (for diagnosing a stuck run).
    faulthandler.register(signal.SIGUSR1)
    bootstrap, input_topic, output_topic, group, transactional_id = sys.argv[1:6]
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "broker.address.family": "v4",
            "transactional.id": transactional_id,
            "linger.ms": 5,
            "transaction.timeout.ms": 30000,
            **({"debug": os.environ["TXN_LOOP_DEBUG"]} if os.environ.get("TXN_LOOP_DEBUG") else {}),
        }
    )
    producer.init_transactions(30)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "broker.address.family": "v4",
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "max.poll.interval.ms": 10000,
            "fetch.wait.max.ms": 100,
            **({"debug": os.environ["TXN_LOOP_DEBUG"]} if os.environ.get("TXN_LOOP_DEBUG") else {}),
        }
    )
    consumer.subscribe([input_topic])
    attempt = 0
    while True:
        messages = [m for m in consumer.consume(num_messages=BATCH_MAX, timeout=0.5) if m.error() is None]
        if not messages:
            continue
        producer.begin_transaction()
        attempt += 1
        try:
            for message in messages:
                producer.produce(output_topic, key=message.key(), value=message.value())
            positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
            if attempt % 3 == 0:
                producer.flush(10)  # the aborted records reach the log, so read_uncommitted sees them
                producer.abort_transaction(30)
                rewind(consumer)
            else:
                producer.commit_transaction(30)
        except KafkaException as e:
            # What a real application does: a fatal error (fenced) ends it; anything else
            # (a rebalance racing the offset commit) aborts and redoes the work.
            if e.args[0].fatal():
                raise
            print(f"transaction {attempt} failed ({e}); aborting", flush=True)
            producer.abort_transaction(30)
            rewind(consumer)
        print(f"transaction {attempt} done", flush=True)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
