"""Hand-built Kafka frames for tests that must send what no well-behaved client sends.

Only what the tests need: request headers v1/v2, ApiVersions, a Produce v2 request with a
legacy (magic 1) message set, and reading one size-prefixed response frame.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib
from typing import Optional

API_PRODUCE = 0
API_METADATA = 3
API_VERSIONS = 18

UNSUPPORTED_VERSION = 35

# Bound on any response frame these tests read; real ones here are a few KiB.
MAX_RESPONSE_BYTES = 1 << 20


def string(value: Optional[str]) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def compact_string(value: str) -> bytes:
    data = value.encode()
    return unsigned_varint(len(data) + 1) + data


def unsigned_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def request(api_key: int, api_version: int, correlation_id: int, body: bytes = b"",
            client_id: Optional[str] = "runnel-wire-test", flexible: bool = False) -> bytes:
    """A size-prefixed request: header v1 (or v2 with an empty tagged-field section)."""
    header = struct.pack(">hhi", api_key, api_version, correlation_id) + string(client_id)
    if flexible:
        header += unsigned_varint(0)
    frame = header + body
    return struct.pack(">i", len(frame)) + frame


def api_versions_request(correlation_id: int, version: int = 3) -> bytes:
    if version >= 3:
        body = compact_string("runnel-wire-test") + compact_string("0.0.1") + unsigned_varint(0)
        return request(API_VERSIONS, version, correlation_id, body, flexible=True)
    return request(API_VERSIONS, version, correlation_id)


def legacy_message_set(key: bytes, value: bytes, timestamp_ms: int) -> bytes:
    """One magic-1 message (the format Produce v0–v2 carry)."""
    content = struct.pack(">bbq", 1, 0, timestamp_ms)
    content += struct.pack(">i", len(key)) + key + struct.pack(">i", len(value)) + value
    crc = zlib.crc32(content) & 0xFFFFFFFF
    message = struct.pack(">I", crc) + content
    return struct.pack(">qi", 0, len(message)) + message


def produce_v2_request(correlation_id: int, topic: str, partition: int, message_set: bytes) -> bytes:
    body = struct.pack(">hi", -1, 5000)  # acks=all, timeout 5 s
    body += struct.pack(">i", 1) + string(topic)
    body += struct.pack(">i", 1) + struct.pack(">i", partition)
    body += struct.pack(">i", len(message_set)) + message_set
    return request(API_PRODUCE, 2, correlation_id, body)


def connect(address: tuple[str, int], timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send; False if the broker already closed the connection (which is allowed)."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


class Closed(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"read {len(buf)} of {n} bytes before the deadline")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError as e:
            raise Closed("connection reset") from e
        except socket.timeout as e:
            raise TimeoutError(f"read {len(buf)} of {n} bytes before the deadline") from e
        if not chunk:
            raise Closed(f"closed after {len(buf)} of {n} bytes")
        buf.extend(chunk)
    return bytes(buf)


def read_response(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    """One response frame (without its size prefix). Raises Closed or TimeoutError."""
    deadline = time.monotonic() + timeout_s
    (size,) = struct.unpack(">i", _recv_exact(sock, 4, deadline))
    assert 4 <= size <= MAX_RESPONSE_BYTES, f"response frame size {size} out of bounds"
    return _recv_exact(sock, size, deadline)


def outcome_after(sock: socket.socket, timeout_s: float = 5.0) -> tuple[str, Optional[bytes]]:
    """('response', frame) | ('closed', None) | ('timeout', None): what the broker did next."""
    try:
        return "response", read_response(sock, timeout_s)
    except Closed:
        return "closed", None
    except TimeoutError:
        return "timeout", None


def wait_closed(sock: socket.socket, timeout_s: float = 5.0) -> bool:
    """True if the broker closes the connection within the bound (any bytes sent are drained)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        if not chunk:
            return True
    return False


class Reader:
    """Big-endian cursor over a response body."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        assert self.pos + size <= len(self.data), f"response too short: need {size} bytes at {self.pos} of {len(self.data)}"
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def string(self) -> Optional[str]:
        length = self.take(">h")
        if length < 0:
            return None
        assert self.pos + length <= len(self.data), "string runs past the response"
        value = self.data[self.pos:self.pos + length].decode()
        self.pos += length
        return value

    def remaining(self) -> int:
        return len(self.data) - self.pos


# --- RecordBatch v2 and Produce v3 -------------------------------------------------------------

CORRUPT_MESSAGE = 2
INVALID_RECORD = 87


def zigzag_varint(value: int) -> bytes:
    return unsigned_varint((value << 1) ^ (value >> 63))


def _varbytes(data: Optional[bytes]) -> bytes:
    if data is None:
        return zigzag_varint(-1)
    return zigzag_varint(len(data)) + data


def record_batch(records: list[tuple[Optional[bytes], Optional[bytes]]], base_timestamp_ms: int,
                 base_offset: int = 0) -> bytes:
    """A magic-2 RecordBatch (no compression, no producer id) with a correct CRC32C."""
    import crc32c

    body = b""
    for delta, (key, value) in enumerate(records):
        record = struct.pack(">b", 0) + zigzag_varint(0) + zigzag_varint(delta)
        record += _varbytes(key) + _varbytes(value) + zigzag_varint(0)
        body += zigzag_varint(len(record)) + record
    last_delta = len(records) - 1
    after_crc = struct.pack(">hiqqqhii", 0, last_delta, base_timestamp_ms, base_timestamp_ms, -1, -1, -1, len(records)) + body
    crc = crc32c.crc32c(after_crc)
    after_length = struct.pack(">ibI", -1, 2, crc) + after_crc
    return struct.pack(">qi", base_offset, len(after_length)) + after_length


# Byte offset of the CRC field in a RecordBatch: baseOffset(8) + length(4) + leaderEpoch(4) + magic(1).
BATCH_CRC_AT = 17


def produce_v3_request(correlation_id: int, topic: str, partition: int, records: bytes, acks: int = -1) -> bytes:
    body = string(None) + struct.pack(">hi", acks, 5000)
    body += struct.pack(">i", 1) + string(topic)
    body += struct.pack(">i", 1) + struct.pack(">i", partition)
    body += struct.pack(">i", len(records)) + records
    return request(API_PRODUCE, 3, correlation_id, body)


def produce_v3_partition_results(frame: bytes, correlation_id: int) -> list[tuple[int, int]]:
    """[(error_code, base_offset)] per partition from a Produce v3 response."""
    reader = Reader(frame)
    got = reader.take(">i")
    assert got == correlation_id, f"correlation id {got}, wanted {correlation_id}"
    results = []
    for _ in range(reader.take(">i")):
        reader.string()
        for _ in range(reader.take(">i")):
            _partition, error_code, base_offset, _append_time = reader.take(">ihqq")
            results.append((error_code, base_offset))
    return results
