"""Produce v3 with hand-built RecordBatches: valid ones are stored, damaged ones refused."""

import struct
import time

import kafka_wire as wire
from clients import consume_partitions, create_topic, unique_topic, watermarks


def produce_raw(broker, topic, records: bytes, correlation_id: int):
    sock = wire.connect(broker.kafka_address)
    try:
        sock.sendall(wire.produce_v3_request(correlation_id, topic, 0, records))
        outcome, frame = wire.outcome_after(sock, 10)
    finally:
        sock.close()
    assert outcome == "response", f"Produce v3 (correlation {correlation_id}): {outcome}, wanted a response"
    (result,) = wire.produce_v3_partition_results(frame, correlation_id)
    return result


def test_damaged_batches_are_refused_and_never_stored(broker):
    topic = unique_topic("wire")
    create_topic(broker.bootstrap, topic, 1)
    now = int(time.time() * 1000)
    good = wire.record_batch([(b"k0", b"first"), (None, b"second")], now)
    assert produce_raw(broker, topic, good, 1) == (0, 0), "a valid hand-built batch was refused"

    flipped = bytearray(wire.record_batch([(b"k", b"tampered")], now))
    flipped[-1] ^= 0xFF  # payload byte changed, CRC left as it was
    code, _ = produce_raw(broker, topic, bytes(flipped), 2)
    assert code == wire.CORRUPT_MESSAGE, f"batch with a bad CRC: error {code}, wanted CORRUPT_MESSAGE (2)"

    wrong_crc = bytearray(wire.record_batch([(b"k", b"v")], now))
    wrong_crc[wire.BATCH_CRC_AT:wire.BATCH_CRC_AT + 4] = b"\x00\x00\x00\x00"
    code, _ = produce_raw(broker, topic, bytes(wrong_crc), 3)
    assert code == wire.CORRUPT_MESSAGE, f"batch with CRC zeroed: error {code}, wanted CORRUPT_MESSAGE (2)"

    batch = wire.record_batch([(b"k", b"v")], now)
    too_long = batch[:8] + struct.pack(">i", struct.unpack(">i", batch[8:12])[0] + 100) + batch[12:]
    code, _ = produce_raw(broker, topic, too_long, 4)
    assert code in (wire.CORRUPT_MESSAGE, wire.INVALID_RECORD), f"batch length past the data: error {code}, wanted CORRUPT_MESSAGE or INVALID_RECORD"

    truncated = wire.record_batch([(b"k", b"v" * 100)], now)[:-30]
    code, _ = produce_raw(broker, topic, truncated, 5)
    assert code in (wire.CORRUPT_MESSAGE, wire.INVALID_RECORD), f"truncated batch: error {code}, wanted CORRUPT_MESSAGE or INVALID_RECORD"

    assert produce_raw(broker, topic, wire.record_batch([(b"k2", b"third")], now), 6) == (0, 2), "valid batch after refused ones"
    assert watermarks(broker.bootstrap, topic, 0) == (0, 3), "refused batches changed the log end"
    records = consume_partitions(broker.bootstrap, topic, [0])[0]
    assert [(r.key, r.value) for r in records] == [(b"k0", b"first"), (None, b"second"), (b"k2", b"third")]
