"""Shared fixtures and markers.

Every container a test makes is named ``lxcbind-test-<uuid8>`` (``container_name``) and is
destroyed in teardown even when the test fails; at the end of the session the suite fails if
any ``lxcbind-test-*`` container is still defined.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Iterator

import pytest

from benchmarks._common import make_busybox as make_busybox  # one busybox recipe: see there

TEST_PREFIX = "lxcbind-test-"


def _native_available() -> str:
    try:
        import lxcbind.lxc._native  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return ""


IS_ROOT = os.geteuid() == 0
NATIVE_ERROR = _native_available()

# The signal tests send SIGINT, SIGQUIT and SIGHUP to the CLI and expect what a terminal's user
# gets.  A shell that starts the suite in the background (``cmd &`` in a script) or under
# ``nohup`` makes pytest, and so every process a test starts, ignore them from the start; the
# suite's results must not depend on how it was started.
for _sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
    if signal.getsignal(_sig) is signal.SIG_IGN:
        signal.signal(_sig, signal.default_int_handler if _sig == signal.SIGINT
                      else signal.SIG_DFL)

# Real markers (registered in pyproject.toml), so that ``pytest -m "not requires_root"`` selects
# the tests an unprivileged machine can run.  Everything under tests/integration and
# tests/security starts containers and carries both; ``pytest_collection_modifyitems`` turns a
# marker into a skip where the machine lacks what it names.
requires_root = pytest.mark.requires_root


def _clone_refusal() -> str | None:
    """Why this kernel cannot make clones (``template.host_refusal``), or None."""
    if NATIVE_ERROR:
        return f"no binding: {NATIVE_ERROR}"
    from lxcbind.sandbox.template import host_refusal

    return host_refusal()


CLONE_REFUSAL = _clone_refusal()
requires_clones = pytest.mark.skipif(CLONE_REFUSAL is not None, reason=str(CLONE_REFUSAL))
requires_lxc = pytest.mark.requires_lxc
_CONTAINER_DIRS = {"integration", "security"}
# Without the compiled module those directories cannot even be imported: not collected at all
# (the unit tests that need it skip themselves with importorskip).
collect_ignore_glob = [f"{d}/*" for d in sorted(_CONTAINER_DIRS)] if NATIVE_ERROR else []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _CONTAINER_DIRS & set(item.path.parts):
            item.add_marker(requires_root)
            item.add_marker(requires_lxc)
        if not IS_ROOT and item.get_closest_marker("requires_root"):
            item.add_marker(pytest.mark.skip(reason="needs root"))
        if NATIVE_ERROR and item.get_closest_marker("requires_lxc"):
            item.add_marker(pytest.mark.skip(reason=f"liblxc binding unavailable: {NATIVE_ERROR}"))


_NAMES_MADE: set[str] = set()


def new_name(tag: str = "") -> str:
    """A fresh test container name, remembered so the end-of-session check covers it (and only
    names this session made: parallel runs on one machine do not disturb each other)."""
    name = f"{TEST_PREFIX}{tag}{uuid.uuid4().hex[:8]}"
    _NAMES_MADE.add(name)
    return name


def destroy_quietly(name: str, lxcpath: str | None = None) -> None:
    """Destroy a test container whatever state it is in; 'already gone' is fine."""
    from lxcbind import Container

    with Container(name, lxcpath) as c:
        if c.defined:
            c.destroy()


@pytest.fixture
def container_name() -> Iterator[str]:
    name = new_name()
    yield name
    destroy_quietly(name)


@pytest.fixture
def busybox(container_name: str):
    """A fresh, running busybox container, destroyed after the test."""
    c = make_busybox(container_name)
    try:
        yield c
    finally:
        if c.defined:
            c.destroy()
        c.close()


@pytest.fixture(scope="session")
def shared_busybox():
    """One running busybox container shared by read-only tests of a session."""
    name = new_name("shared-")
    c = make_busybox(name)
    try:
        yield c
    finally:
        try:
            if c.defined:
                c.destroy()
        finally:
            c.close()


def run_threads(worker, count: int, timeout: float = 120) -> list[BaseException]:
    """Run ``worker(n)`` in ``count`` threads; return what they raised.  Fails the test if a
    thread is still running after ``timeout`` (a deadlock)."""
    import threading

    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            worker(n)
        except BaseException as exc:  # handed back to the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "threads deadlocked"
    return errors


def leftover_test_containers() -> list[str]:
    from lxcbind import list_containers

    return [n for n in list_containers() if n in _NAMES_MADE]


@pytest.fixture(scope="session", autouse=True)
def no_leftovers_at_end():
    """Fail the session if a test left a container behind."""
    yield
    if NATIVE_ERROR or not IS_ROOT:
        return
    left = leftover_test_containers()
    for name in left:
        destroy_quietly(name)
    assert not left, f"tests left containers behind: {left}"


@pytest.fixture
def busybox_static() -> str:
    path = shutil.which("busybox")
    if path is None:
        pytest.fail("busybox is not installed (apt-get install busybox-static)")
    return path
