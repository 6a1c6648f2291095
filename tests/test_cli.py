"""The ``hein`` command line, run as real subprocesses (``python -m hein ...``).

Synchronisation is by output only: a thread per pipe reads lines into a queue and the tests wait
for the lines they expect, with deadlines. Every process a test starts is killed in ``finally``.
"""

import base64
import datetime
import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest
import pytz

import hein
from hein import cli

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Deadline for one expected line or exit, in seconds.
DEADLINE = 15.0


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.pop(cli.BENCH_ENV, None)
    env.update(extra)
    return env


class Hein:
    """``python -m hein ARGS`` in a child process, its output read line by line."""

    def __init__(
        self, *args: str, stdin: Optional[int] = subprocess.DEVNULL, env=None, cwd=None
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hein", *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env() if env is None else env,
            cwd=cwd,
        )
        self.out: queue.Queue[Optional[str]] = queue.Queue()
        self.err: queue.Queue[Optional[str]] = queue.Queue()
        self.stdout: List[str] = []
        self.stderr: List[str] = []
        self._threads = [
            threading.Thread(
                target=self._read, args=(self.proc.stdout, self.out, self.stdout), daemon=True
            ),
            threading.Thread(
                target=self._read, args=(self.proc.stderr, self.err, self.stderr), daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(pipe, lines: "queue.Queue[Optional[str]]", seen: List[str]) -> None:
        for raw in pipe:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            seen.append(line)
            lines.put(line)
        lines.put(None)

    def _line(self, lines: "queue.Queue[Optional[str]]", what: str, timeout: float) -> str:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                "no %s line within %g s from hein %s; stderr: %r"
                % (what, timeout, self.args, self.stderr)
            )
        if line is None:
            lines.put(None)
            raise AssertionError(
                "hein %s closed its %s; stdout %r stderr %r"
                % (self.args, what, self.stdout, self.stderr)
            )
        return line

    def line(self, timeout: float = DEADLINE) -> str:
        """The next line of standard output."""
        return self._line(self.out, "stdout", timeout)

    def err_line(self, timeout: float = DEADLINE) -> str:
        """The next line of standard error."""
        return self._line(self.err, "stderr", timeout)

    def lines(self, count: int, timeout: float = DEADLINE) -> List[str]:
        return [self.line(timeout) for _ in range(count)]

    def wait(self, timeout: float = DEADLINE) -> int:
        code = self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        for thread in self._threads:
            thread.join(5.0)


@pytest.fixture
def run():
    """Start ``hein`` children; every one still running at the end is killed."""
    started: List[Hein] = []

    def start(*args: str, **kwargs) -> Hein:
        child = Hein(*args, **kwargs)
        started.append(child)
        return child

    try:
        yield start
    finally:
        for child in started:
            child.kill()


def tell_on_free_port(run, *args: str, **kwargs):
    """Start ``hein tell 0 ARGS``; return it and the port it announced on stderr."""
    teller = run("tell", "0", *args, **kwargs)
    line = teller.err_line()
    assert line.startswith("hein: listening on port "), line
    return teller, int(line.rsplit(" ", 1)[1])


def run_to_end(
    *args: str, timeout: float = DEADLINE, env=None, cwd=None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hein", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env() if env is None else env,
        cwd=cwd,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hein: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def free_port() -> int:
    """A port with nothing listening on it (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Transmitter:
    """An in-process transmitter on 127.0.0.1 whose registrations can be awaited."""

    def __init__(self, nreceivermax: int = 5) -> None:
        self.names: queue.Queue[str] = queue.Queue()
        self.t = hein.SocTransmitter(0, nreceivermax, start=False, host="127.0.0.1")
        self.t._newconnection = self.names.put
        self.t.start()

    def wait_receiver(self, name: str, timeout: float = DEADLINE) -> None:
        assert self.names.get(timeout=timeout) == name


# ------------------------------------------------------------------------------------ help


@pytest.mark.parametrize("command", [[], ["listen"], ["tell"], ["demo"], ["bench"]])
def test_help_of_each_command(command):
    result = run_to_end(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: hein"), result.stdout
    assert result.stderr == ""


def test_help_tells_the_json_formats():
    listen = run_to_end("listen", "--help").stdout
    assert '{"$bytes": "BASE64"}' in listen and "ISO 8601" in listen
    tell = run_to_end("tell", "--help").stdout
    assert "$datetime" in tell and "--wait-receivers" in tell


def test_version_and_no_command():
    result = run_to_end("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "hein %s" % hein.__version__
    result = run_to_end()
    assert result.returncode == 2
    assert "usage: hein" in result.stderr


def test_unknown_option_is_a_usage_error():
    result = run_to_end("listen", "5000", "--name", "x", "--bogus")
    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- listen + tell


def test_listen_fed_by_tell_plain(run):
    teller, port = tell_on_free_port(
        run, "hello", "42", '{"a": [1, 2.5, null]}', '"42"', "NaN", "two\nlines"
    )
    listener = run("listen", str(port), "--name", "Captain")
    assert listener.lines(6) == ["hello", "42", "{'a': [1, 2.5, None]}", "42", "NaN", "two\\nlines"]
    assert teller.wait() == 0
    assert teller.stdout == [] and teller.stderr == ["hein: listening on port %d" % port]

    # the listener reconnects by itself to the next transmitter on the port; tags, raw bytes
    second = run("tell", str(port), "--tag", "news", "--raw", "some text", '{"not": "json"}')
    assert listener.lines(2) == ["news: b'some text'", 'news: b\'{"not": "json"}\'']
    assert second.wait() == 0
    assert second.stdout == [] and second.stderr == []

    third = run("tell", str(port), "--tag", "t1", "1.5")
    assert listener.line() == "t1: 1.5"
    assert third.wait() == 0

    listener.proc.send_signal(signal.SIGINT)
    assert listener.wait() == 0
    assert listener.stderr == []


def test_listen_json_fed_by_tell(run):
    message = json.dumps(
        {
            "when": {"$datetime": "2017-06-01T12:00:00+02:00"},
            "utc": {"$datetime": "2017-06-01T12:00:00Z"},
            "day": {"$date": "2017-06-01"},
            "at": {"$time": "12:30:00"},
            "b": {"$bytes": "AAE="},
            "list": [1, "x", None, True],
            "nan": {"$float": "nan"},
        }
    )
    teller, port = tell_on_free_port(run, "--tag", "typed", message, "plain text")
    listener = run("listen", str(port), "--name", "Kirk", "--json", "--count", "4")
    first = json.loads(listener.line())
    assert first == {
        "tag": "typed",
        "data": {
            "when": "2017-06-01T12:00:00+02:00",
            "utc": "2017-06-01T12:00:00+00:00",
            "day": "2017-06-01",
            "at": "12:30:00",
            "b": {"$bytes": "AAE="},
            "list": [1, "x", None, True],
            "nan": {"$float": "nan"},
        },
    }
    assert json.loads(listener.line()) == {"tag": "typed", "data": "plain text"}
    assert teller.wait() == 0

    raw = run("tell", str(port), "--raw", "héllo", "\x01\x02")
    assert json.loads(listener.line()) == {
        "tag": None,
        "data": {"$bytes": base64.b64encode("héllo".encode()).decode()},
    }
    assert json.loads(listener.line()) == {"tag": None, "data": {"$bytes": "AQI="}}
    assert raw.wait() == 0
    assert listener.wait() == 0  # --count 4 reached
    assert listener.stderr == []


def test_listen_json_of_library_values(run):
    """Values only a Python transmitter sends: zones, tuples, big ints, hein.Message."""
    transmitter = Transmitter()
    try:
        listener = run(
            "listen", str(transmitter.t.port), "--name", "Spock", "--json", "--count", "3"
        )
        transmitter.wait_receiver("Spock")
        paris = pytz.timezone("Europe/Paris").localize(datetime.datetime(2017, 12, 3, 10, 30, 0, 5))
        transmitter.t.tell(
            {"d": paris, "t": (1, 2), "big": 2**70, "inf": -math.inf, 3: b"\xff"}, tag="lib"
        )
        transmitter.t.tell({"lazy": datetime.date(2020, 1, 2)}, unpack=False)
        transmitter.t.tell_raw(b"\x00raw")
        assert json.loads(listener.line()) == {
            "tag": "lib",
            "data": {
                "d": "2017-12-03T10:30:00.000005+01:00",
                "t": [1, 2],
                "big": 2**70,
                "inf": {"$float": "-inf"},
                "3": {"$bytes": "/w=="},
            },
        }
        assert json.loads(listener.line()) == {"tag": None, "data": {"lazy": "2020-01-02"}}
        assert json.loads(listener.line()) == {"tag": None, "data": {"$bytes": "AHJhdw=="}}
        assert listener.wait() == 0
    finally:
        transmitter.t.close()


def test_listen_plain_prints_like_the_default_callback(run):
    transmitter = Transmitter()
    try:
        listener = run("listen", str(transmitter.t.port), "--name", "Uhura", "--count", "2")
        transmitter.wait_receiver("Uhura")
        when = datetime.datetime(2017, 12, 3, tzinfo=pytz.utc)
        transmitter.t.tell({"d": when, "b": b"bytes"}, tag="news")
        transmitter.t.tell("ünïcode")
        assert listener.line() == "news: %s" % {"d": when, "b": b"bytes"}
        assert listener.line() == "ünïcode"
        assert listener.wait() == 0
    finally:
        transmitter.t.close()


def test_tell_from_stdin_streams_lines(run):
    teller, port = tell_on_free_port(run, "--tag", "in", stdin=subprocess.PIPE)
    listener = run("listen", str(port), "--name", "Sulu")
    teller.proc.stdin.write(b"first line\n")
    teller.proc.stdin.flush()
    assert listener.line() == "in: first line"  # sent before standard input ends
    teller.proc.stdin.write(b'\n  \n{"n": [1, 2]}\r\n{"$bytes": "AAE="}\nlast')
    teller.proc.stdin.close()
    assert listener.lines(3) == ["in: {'n': [1, 2]}", "in: b'\\x00\\x01'", "in: last"]
    assert teller.wait() == 0
    assert teller.stdout == []


def test_tell_many_messages_from_stdin_all_arrive_in_order(run):
    count = 2000
    teller, port = tell_on_free_port(run, stdin=subprocess.PIPE)
    listener = run("listen", str(port), "--name", "Chekov", "--count", str(count))
    teller.proc.stdin.write(b"".join(b"%d\n" % n for n in range(count)))
    teller.proc.stdin.close()
    assert teller.wait() == 0
    assert listener.wait() == 0
    assert listener.stdout == [str(n) for n in range(count)]


def test_tell_raw_from_stdin_sends_bytes(run):
    teller, port = tell_on_free_port(run, "--raw", stdin=subprocess.PIPE)
    listener = run("listen", str(port), "--name", "Scotty", "--json", "--count", "2")
    teller.proc.stdin.write(b'{"a": 1}\n\xff\xfe\n')
    teller.proc.stdin.close()
    assert [json.loads(line)["data"] for line in listener.lines(2)] == [
        {"$bytes": base64.b64encode(b'{"a": 1}').decode()},
        {"$bytes": base64.b64encode(b"\xff\xfe").decode()},
    ]
    assert teller.wait() == 0
    assert listener.wait() == 0


def test_tell_bad_typed_line_on_stdin_is_skipped_with_a_warning(run):
    teller, port = tell_on_free_port(run, stdin=subprocess.PIPE)
    listener = run("listen", str(port), "--name", "Rand", "--count", "2")
    teller.proc.stdin.write(b'one\n{"$datetime": "yesterday"}\ntwo\n')
    teller.proc.stdin.close()
    assert listener.lines(2) == ["one", "two"]
    assert teller.wait() == 1
    assert any("line 2 skipped" in line and "$datetime" in line for line in teller.stderr)
    assert teller.stderr[-1] == "hein: error: 1 line skipped"


def test_tell_bad_typed_argument_is_an_error_before_anything():
    result = run_to_end("tell", "0", "ok", '{"$bytes": "not base64!"}')
    assert_one_line_error(result, 1, "message 2", "$bytes")


def test_tell_waits_for_n_receivers(run):
    teller, port = tell_on_free_port(run, "--wait-receivers", "2", "both")
    first = run("listen", str(port), "--name", "One", "--count", "1")
    second = run("listen", str(port), "--name", "Two", "--count", "1")
    assert first.line() == "both"
    assert second.line() == "both"
    assert teller.wait() == 0
    assert first.wait() == 0 and second.wait() == 0


def test_tell_wait_receivers_timeout_is_an_error(run):
    teller, port = tell_on_free_port(run, "--wait-receivers", "2", "--timeout", "2", "hi")
    listener = run("listen", str(port), "--name", "Alone")
    assert teller.wait() == 1
    assert (
        teller.stderr[-1] == "hein: error: 1 of 2 receivers connected to port %d within 2 s" % port
    )
    assert "Traceback" not in "\n".join(teller.stderr)
    assert listener.stdout == []


def test_tell_wait_receivers_zero_does_not_wait():
    result = run_to_end("tell", "0", "--wait-receivers", "0", "nobody hears this")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


# ------------------------------------------------------------------------------------- errors


def test_port_in_use_is_a_one_line_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_to_end("tell", str(port), "hi")
        assert_one_line_error(result, 1, "cannot listen on port %d" % port, "in use")
        result = run_to_end("demo", "--port", str(port))
        assert_one_line_error(result, 1, "cannot listen on port %d" % port)


@pytest.mark.parametrize(
    "args, message",
    [
        (["listen", "abc", "--name", "x"], "invalid port 'abc': not an integer"),
        (["listen", "0", "--name", "x"], "invalid port 0: must be between 1 and 65535"),
        (["listen", "70000", "--name", "x"], "invalid port 70000: must be between 1 and 65535"),
        (["tell", "65536", "hi"], "invalid port 65536: must be between 0 and 65535"),
        (["tell", "-1", "hi"], "invalid port -1: must be between 0 and 65535"),
        (["demo", "--port", "x"], "invalid port 'x'"),
        (["listen", "5000", "--name", "a-name-much-too-long"], "invalid name"),
        (["listen", "5000"], "the following arguments are required: --name"),
        (["tell", "5000", "--tag", "bad/tag", "hi"], "invalid tag"),
        (["tell", "5000", "--timeout", "0", "hi"], "invalid number of seconds"),
    ],
)
def test_usage_errors(args, message):
    result = run_to_end(*args)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: hein")
    assert message in result.stderr.strip().splitlines()[-1], result.stderr


def test_listen_timeout_with_nothing_on_the_port():
    port = free_port()
    started = time.monotonic()
    result = run_to_end("listen", str(port), "--name", "Nobody", "--timeout", "0.5")
    assert time.monotonic() - started >= 0.5
    assert_one_line_error(
        result,
        1,
        "not connected to a transmitter at 127.0.0.1:%d within 0.5 s" % port,
        "connection refused",
    )


def test_listen_timeout_when_the_name_is_taken():
    transmitter = Transmitter()
    receiver = hein.SocReceiver(transmitter.t.port, "Taken", hostname="127.0.0.1", connect=False)
    receiver._newconnection = lambda: None
    try:
        receiver.connect()
        transmitter.wait_receiver("Taken")
        result = run_to_end("listen", str(transmitter.t.port), "--name", "Taken", "--timeout", "1")
        assert_one_line_error(result, 1, "within 1 s", "name in use")
    finally:
        receiver.close()
        transmitter.t.close()


def test_listen_unknown_host():
    result = run_to_end("listen", "5000", "--name", "x", "--host", "no-such-host.invalid")
    assert_one_line_error(result, 1, "cannot resolve host 'no-such-host.invalid'")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_listen_cleanly(run, signum):
    transmitter = Transmitter()
    try:
        listener = run("listen", str(transmitter.t.port), "--name", "Sig")
        transmitter.wait_receiver("Sig")
        transmitter.t.tell("before")
        assert listener.line() == "before"
        listener.proc.send_signal(signum)
        assert listener.wait() == 0
        assert listener.stderr == []
        assert listener.stdout == ["before"]
    finally:
        transmitter.t.close()


def test_sigint_stops_listen_while_not_connected(run):
    listener = run("listen", str(free_port()), "--name", "Waiting", "-v")
    # -v logs the first failed connection attempt: the listener is in its wait loop
    assert "cannot connect" in listener.err_line()
    listener.proc.send_signal(signal.SIGINT)
    assert listener.wait() == 0
    assert not any("Traceback" in line for line in listener.stderr)


# --------------------------------------------------------------------------------------- demo


def test_demo():
    result = run_to_end("demo", timeout=60)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    sent = (
        "{'pi': 3.14, 'when': datetime.datetime(2017, 6, 1, 12, 0, tzinfo=<UTC>),"
        " 'raw': b'\\x00\\x01'}"
    )
    for name in ("Captain", "Tennille"):
        assert "[transmitter] hello: %s" % name in lines
        assert "[%s] %s" % (name, sent) in lines
        assert "[%s] news: b'some text'" % name in lines
        assert any(
            line.startswith("[%s] status: {'foo': 'bar', 'now': datetime.datetime(" % name)
            for line in lines
        )
    assert "[transmitter] {'Captain': True}" in lines
    assert "[Captain] ['only', 'Captain', 'hears', 'this']" in lines
    assert not any(line.startswith("[Tennille] ['only'") for line in lines)
    assert lines[-1].startswith("demo done")


def test_demo_fails_when_a_receiver_never_shows_up():
    # no Python process starts, imports hein and connects within a millisecond
    result = run_to_end("demo", "--timeout", "0.001")
    assert_one_line_error(result, 1, "receiver Captain")


# -------------------------------------------------------------------------------------- bench


def test_bench_without_a_suite_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "run.py"
    result = run_to_end("bench", env=_env(**{cli.BENCH_ENV: str(missing)}), cwd=str(tmp_path))
    assert_one_line_error(result, 1, "no benchmark suite found", str(missing))


def test_bench_runs_the_suite_with_its_arguments(tmp_path):
    suite = tmp_path / "benchmarks"
    suite.mkdir()
    (suite / "run.py").write_text("import sys\nprint(sys.argv[1:])\nsys.exit(3)\n")
    env = _env(**{cli.BENCH_ENV: str(suite)})
    result = run_to_end("bench", "--quick", "x", "-n", "5", env=env)
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == "['--quick', 'x', '-n', '5']"
    result = run_to_end("-v", "bench", "--", "--help", env=env)
    assert result.stdout.strip() == "['--help']"


def test_find_benchmarks(tmp_path):
    package = tmp_path / "checkout" / "hein"
    package.mkdir(parents=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    found, looked = cli.find_benchmarks(env={}, package_dir=package, cwd=cwd)
    assert found is None
    assert looked == [
        tmp_path / "checkout" / "benchmarks" / "run.py",
        cwd / "benchmarks" / "run.py",
    ]
    (cwd / "benchmarks").mkdir()
    (cwd / "benchmarks" / "run.py").write_text("")
    assert (
        cli.find_benchmarks(env={}, package_dir=package, cwd=cwd)[0]
        == cwd / "benchmarks" / "run.py"
    )
    (tmp_path / "checkout" / "benchmarks").mkdir()
    (tmp_path / "checkout" / "benchmarks" / "run.py").write_text("")
    assert (
        cli.find_benchmarks(env={}, package_dir=package, cwd=cwd)[0]
        == tmp_path / "checkout" / "benchmarks" / "run.py"
    )
    override = {cli.BENCH_ENV: str(tmp_path / "missing")}
    assert cli.find_benchmarks(env=override, package_dir=package, cwd=cwd) == (
        None,
        [tmp_path / "missing"],
    )


# ------------------------------------------------------------------------- formats, in-process


def test_parse_message():
    assert cli.parse_message("42") == 42
    assert cli.parse_message("hello world") == "hello world"
    assert cli.parse_message("007") == "007"
    assert cli.parse_message("NaN") == "NaN"
    assert cli.parse_message('"quoted"') == "quoted"
    assert cli.parse_message('{"a": {"$bytes": "AAE="}}') == {"a": b"\x00\x01"}
    assert cli.parse_message('{"$bytes": "AAE=", "other": 1}') == {"$bytes": "AAE=", "other": 1}
    when = cli.parse_message('{"$datetime": "2017-06-01T12:00:00Z"}')
    assert when == datetime.datetime(2017, 6, 1, 12, tzinfo=datetime.timezone.utc)
    assert math.isinf(cli.parse_message('{"$float": "-inf"}'))
    with pytest.raises(ValueError, match=r"\$date"):
        cli.parse_message('{"$date": 3}')


def test_format_message():
    assert cli.format_message(b"x", "tag") == "tag: b'x'"
    assert cli.format_message("a\nb", None) == "a\\nb"
    message = hein.Message(hein.json_dumps({"k": (1, b"\x00")}))
    assert (
        cli.format_message(message, None, as_json=True)
        == '{"tag": null, "data": {"k": [1, {"$bytes": "AA=="}]}}'
    )
    assert cli.to_jsonable(hein.Message(b"not json")) == {
        "$undecodable": base64.b64encode(b"not json").decode()
    }
    assert cli.to_jsonable(object) == {"$repr": repr(object)}


def test_example_script(tmp_path):
    script = REPO_ROOT / "examples" / "cli_demo.sh"
    env = _env(HEIN="%s -m hein" % sys.executable)
    result = subprocess.run(
        ["sh", str(script), str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert "news: b'some text'" in lines
    assert '{"tag": "news", "data": {"$bytes": "c29tZSB0ZXh0"}}' in lines
    assert len(lines) == 10
