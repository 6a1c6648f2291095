"""Shared fixtures: leak checks for hein threads and sockets."""

import threading

import pytest
from helpers import wait_for


def hein_threads():
    return [t for t in threading.enumerate() if t.name.startswith("hein")]


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves hein threads behind."""
    before = set(hein_threads())
    yield
    leftover = wait_for(lambda: [t for t in hein_threads() if t not in before] == [], timeout=3.0)
    if not leftover:
        names = [t.name for t in hein_threads() if t not in before]
        pytest.fail("hein threads left behind: %s" % names)


@pytest.fixture
def closer():
    """Closes the transmitters, receivers and sockets of a test, whatever happens."""
    from helpers import Closer

    with Closer() as c:
        yield c


@pytest.fixture
def peers():
    """Kills the child processes of a test (by process group), whatever happens."""
    from helpers import Peers

    with Peers() as p:
        yield p
