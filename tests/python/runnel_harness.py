"""Start, stop, kill and restart the real `runnel` binary for black-box tests.

A `Broker` owns one data directory and one pair of 127.0.0.1 ports for its whole life, so a
restart (after SIGTERM or SIGKILL) comes back on the same address with the same data, and
clients that reconnect find it where they left it.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Iterable, Mapping, Optional

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# Bounds: how long a broker may take to become healthy, and to exit after SIGTERM.
HEALTH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# Ports are picked free and then handed to the broker; another process can take one in between,
# so a first start that dies on "address in use" is retried on fresh ports this many times.
PORT_RETRIES = 3
STDERR_TAIL_LINES = 60


# Resolved once in the parent: after fork() the child must not dlopen (another thread, e.g.
# librdkafka's, may have held the loader lock at the fork).
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the thread that started it dies (Linux prctl).

    So a test run killed by its timeout, or by CI, leaves no broker behind holding ports.
    Brokers are therefore started from the test's main thread only.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


class BrokerFailure(AssertionError):
    """The broker did not start, did not stop, or exited unexpectedly."""


def runnel_binary() -> pathlib.Path:
    explicit = os.environ.get("RUNNEL_BIN")
    if explicit:
        return pathlib.Path(explicit)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    # tests/run.sh's default profile (Cargo.toml's `testing`), unless it says otherwise.
    return target / os.environ.get("RUNNEL_TEST_PROFILE", "testing") / "runnel"


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out as free on 127.0.0.1 (held together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


class Broker:
    def __init__(
        self,
        binary: pathlib.Path,
        data_dir: pathlib.Path,
        log_path: pathlib.Path,
        sets: Optional[Mapping[str, str]] = None,
        extra_args: Iterable[str] = (),
    ):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.sets = dict(sets or {})
        self.extra_args = list(extra_args)
        self.kafka_port, self.admin_port = free_ports(2)
        self.process: Optional[subprocess.Popen] = None
        self.starts = 0
        self.exit_codes: list[int] = []

    # --- addresses -------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def kafka_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.kafka_port)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def partition_dir(self, topic: str, partition: int) -> pathlib.Path:
        return self.data_dir / "log" / f"{topic}-{partition}"

    # --- lifecycle -------------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [
            str(self.binary),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.bootstrap,
            "--admin-listen",
            f"127.0.0.1:{self.admin_port}",
        ]
        for key, value in self.sets.items():
            cmd += ["--set", f"{key}={value}"]
        return cmd + self.extra_args

    def start(self) -> "Broker":
        assert not self.is_running(), "start() while the broker is running"
        first_start = self.starts == 0
        for attempt in range(PORT_RETRIES):
            try:
                self._spawn_and_wait()
                return self
            except BrokerFailure:
                address_taken = "in use" in self.stderr_tail(20).lower()
                if first_start and address_taken and attempt + 1 < PORT_RETRIES:
                    self.kafka_port, self.admin_port = free_ports(2)
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        self.starts += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")  # plain text in the log files
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        self.wait_healthy()

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.process = None
                self.exit_codes.append(code)
                raise BrokerFailure(
                    f"broker exited with code {code} before /v1/health answered 200\n"
                    + self.stderr_tail()
                )
            try:
                status, body = http_get(self.admin_url + "/v1/health", timeout_s=1.0)
                if status == 200:
                    return
                last = f"HTTP {status}: {body.strip()[:200]}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        self.kill()
        raise BrokerFailure(
            f"broker not healthy within {timeout_s:.0f} s (last: {last})\n" + self.stderr_tail()
        )

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait for a clean exit; SIGKILL and fail if it does not come in time."""
        assert self.process is not None, "stop() on a broker that is not running"
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
                self.process = None
                raise BrokerFailure(
                    f"broker did not exit within {timeout_s:.0f} s of SIGTERM (killed)\n"
                    + self.stderr_tail()
                )
        self.process = None
        self.exit_codes.append(process.returncode)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL: a crash with no chance to flush or clean up."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.exit_codes.append(self.process.returncode)
        self.process = None

    def restart(self) -> "Broker":
        """Clean stop (asserting exit code 0), then start on the same data dir and ports."""
        code = self.stop()
        assert code == 0, f"broker exited with code {code} after SIGTERM\n" + self.stderr_tail()
        return self.start()

    # --- observation -----------------------------------------------------------------------
    def health(self) -> int:
        return http_get(self.admin_url + "/v1/health")[0]

    def metrics(self) -> str:
        status, body = http_get(self.admin_url + "/metrics")
        assert status == 200, f"/metrics answered HTTP {status}: {body[:300]}"
        return body

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return "(no broker log)"
        tail = text.splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)
