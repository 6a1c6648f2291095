"""Every example in examples/ runs, to the end, and prints what it should."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "three_terminals.py": [
        "hello: Captain",
        "hello: Tennille",
        "[Captain] {'pi': 3.14, 'when': datetime.datetime(2017, 6, 1, 12, 0, tzinfo=<UTC>), "
        "'raw': b'\\x00\\x01'}",
        "[Tennille] news: b'some text'",
        "done",
    ],
    "custom_callbacks.py": [
        "joined: logger",
        "joined: counter",
        "logger got 'bye'",
        "counter saw 3",
    ],
    "long_running_app.py": ["app loop got: first", "app loop got: second", "'reconnects': 1"],
    "pull_api.py": ["first: None warming up", "pulled: count {'i': 2}", "full queue: 0"],
    "asyncio_receiver.py": ["received ticks: [0, 1, 2, 3, 4]"],
    "telemetry.py": [
        "all [('temp.in', 19.5), ('temp.in', 20.0), ('temp.in', 20.5), ('temp.in', 21.0), "
        "('pressure', 1013.2), ('humidity', 55.0)]",
        "temps [('temp.in', 19.5), ('temp.in', 20.0), ('temp.in', 20.5), ('temp.in', 21.0)]",
    ],
}


def test_every_example_is_tested():
    scripts = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")}
    assert scripts == set(EXPECTED) | {"cli_demo.sh"}


def run(command, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(EXAMPLES.parent))
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=env, cwd=EXAMPLES.parent, **kwargs
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name):
    done = run([sys.executable, str(EXAMPLES / name)])
    assert done.returncode == 0, done.stderr
    for line in EXPECTED[name]:
        assert line in done.stdout, (line, done.stdout)
    assert "Traceback" not in done.stderr


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_demo_script():
    env = dict(os.environ, HEIN="%s -m hein" % sys.executable)
    done = subprocess.run(
        ["sh", str(EXAMPLES / "cli_demo.sh"), str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=EXAMPLES.parent,
        input="",
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "hello" in done.stdout and "news: b'some text'" in done.stdout
    assert '"$bytes": "AAE="' in done.stdout
