"""Shared fixtures. End-to-end tests run against real Stash servers built from the Go
module proxy (tests/support/stash_server/build.py); a missing Go toolchain or a failed
build fails them loudly, it never skips them. The helpers behind them are in
tests/support/harness.py."""

from __future__ import annotations

import sys

import pytest

from tests.support.harness import PythonEnvs, ServerFactory
from tests.support.stash_server.build import PINNED_VERSIONS, build


@pytest.fixture(scope="session")
def stash_binaries() -> dict:
    return {version: build(version, log=lambda m: print(m, file=sys.stderr)) for version in PINNED_VERSIONS}


@pytest.fixture(params=PINNED_VERSIONS, ids=lambda v: f"stash-{v}")
def stash_version(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def python_envs(tmp_path_factory) -> PythonEnvs:
    return PythonEnvs(tmp_path_factory.mktemp("pythons"))


@pytest.fixture
def stash_server_factory(stash_binaries, tmp_path, request, python_envs):
    factory = ServerFactory(stash_binaries, tmp_path, request, python_envs.requests_only())
    yield factory
    factory.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
