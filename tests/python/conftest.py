"""Fixtures: a real `runnel` broker per test, on free 127.0.0.1 ports with a temp data dir.

- `broker`: a running broker with default settings.
- `broker_factory(sets={...}, extra_args=[...], data_dir=...)`: start brokers with options.

Teardown SIGTERMs every broker still running, fails the test if one does not exit with code 0
within the bound, and a failing test's report carries the tail of each broker's output.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from runnel_harness import Broker, runnel_binary

_BROKERS_ATTR = "_runnel_brokers"


def pytest_report_header(config):
    return [f"runnel binary: {runnel_binary()}", f"seed: {os.environ.get('RUNNEL_TEST_SEED', 'default')}"]


@pytest.fixture(scope="session")
def runnel_bin() -> pathlib.Path:
    binary = runnel_binary()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.exit(
            f"no runnel binary at {binary}: run tests/run.sh, or `cargo build --profile testing --bins "
            "--examples` (or set RUNNEL_BIN)",
            returncode=1,
        )
    return binary


@pytest.fixture
def broker_factory(request, runnel_bin, tmp_path):
    brokers: list[Broker] = []
    setattr(request.node, _BROKERS_ATTR, brokers)

    def start(sets=None, extra_args=(), name=None, data_dir=None) -> Broker:
        name = name or f"broker{len(brokers)}"
        broker = Broker(
            runnel_bin,
            data_dir=data_dir or tmp_path / f"{name}-data",
            log_path=tmp_path / f"{name}.log",
            sets=sets,
            extra_args=extra_args,
        )
        brokers.append(broker)
        return broker.start()

    yield start

    problems = []
    for broker in brokers:
        if broker.process is None:
            continue
        try:
            code = broker.stop()
        except AssertionError as e:
            problems.append(str(e))
            continue
        if code != 0:
            problems.append(f"broker exited with code {code} after SIGTERM\n{broker.stderr_tail()}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for broker in getattr(item, _BROKERS_ATTR, []):
            report.sections.append((f"runnel broker output ({broker.log_path.name})", broker.stderr_tail()))


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the connector tests (initdb + pg_ctl on a free port)."""
    from connect_support import PostgresServer

    server = PostgresServer()
    yield server
    server.destroy()


@pytest.fixture
def pg_database(postgres_server, request) -> str:
    """A fresh database on the shared server, named after the test."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    postgres_server.psql(f'DROP DATABASE IF EXISTS "{name}"')
    return postgres_server.create_database(name)
