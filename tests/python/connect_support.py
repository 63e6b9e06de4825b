"""Helpers for the connector tests: a throwaway PostgreSQL server and the Connect REST API.

`PostgresServer` runs initdb as the `postgres` user into a temp dir that user owns, starts the
server with pg_ctl on a free 127.0.0.1 port (trust auth, no Unix socket outside the dir) and
stops it on teardown. It can stop and start again mid-test on the same port and data.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Optional

import clients
from runnel_harness import free_ports

WAIT_S = 90
PG_START_TIMEOUT_S = 60


def _pg_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return found
    raise AssertionError(f"PostgreSQL's {name} is not installed (tests/run.sh installs postgresql)")


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Runs a server binary as the `postgres` user (initdb and postgres refuse root)."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


class PostgresServer:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="runnel-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.port = free_ports(1)[0]
        result = _as_postgres([_pg_bin("initdb"), "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        assert result.returncode == 0, f"initdb failed: {result.stdout}\n{result.stderr}"
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        result = _as_postgres([_pg_bin("pg_ctl"), "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", str(PG_START_TIMEOUT_S), "start"])
        assert result.returncode == 0, f"pg_ctl start failed: {result.stdout}\n{result.stderr}\n{self.log_tail()}"

    def stop(self, mode: str = "fast") -> None:
        result = _as_postgres([_pg_bin("pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop"])
        assert result.returncode == 0, f"pg_ctl stop failed: {result.stdout}\n{result.stderr}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no server log)"

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except AssertionError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres", check: bool = True) -> str:
        """Runs SQL with psql; returns unaligned, tuples-only output (fields split by |)."""
        args = [shutil.which("psql") or _pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, f"psql failed: {sql}\n{result.stderr}"
        return result.stdout

    def rows(self, sql: str, database: str) -> list[list[str]]:
        out = self.psql(sql, database)
        return [line.split("|") for line in out.splitlines() if line]

    def scalar(self, sql: str, database: str) -> str:
        return self.psql(sql, database).strip()

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return name


# --- the Connect REST API -----------------------------------------------------------------------

def rest(broker, method: str, path: str, body: Optional[object] = None, timeout_s: float = 30.0) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(broker.admin_url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode("utf-8", "replace")


def create_connector(broker, name: str, config: dict) -> dict:
    status, body = rest(broker, "POST", "/connectors", {"name": name, "config": config})
    assert status == 201, f"creating {name}: HTTP {status} {body}"
    return body


def connector_status(broker, name: str) -> dict:
    status, body = rest(broker, "GET", f"/connectors/{name}/status")
    assert status == 200, f"status of {name}: HTTP {status} {body}"
    return body


def wait_until(what: str, predicate, timeout_s: float = WAIT_S, interval_s: float = 0.2):
    """`clients.wait_until` with the connectors' longer default wait."""
    return clients.wait_until(what, predicate, timeout_s=timeout_s, interval_s=interval_s)


def wait_running(broker, name: str) -> dict:
    def running():
        status = connector_status(broker, name)
        failed = [t for t in status["tasks"] if t["state"] == "FAILED"]
        assert not failed, f"{name} has failed tasks: {failed}"
        return status if status["tasks"] and all(t["state"] == "RUNNING" for t in status["tasks"]) else None

    return wait_until(f"{name} RUNNING", running)


def assert_no_failed_tasks(broker, name: str) -> None:
    status = connector_status(broker, name)
    failed = [t for t in status["tasks"] if t["state"] == "FAILED"]
    assert not failed, f"{name} has failed tasks: {failed}"
