"""benchmarks/plot.py: the PNG of a benchmark run, and a clear message without matplotlib."""

import subprocess
import sys

from helpers import REPO_ROOT

REFERENCE = REPO_ROOT / "benchmarks" / "reference" / "2026-12-04-compact.json"


def run_plot(*args, block_matplotlib=False):
    code = "import runpy, sys\n"
    if block_matplotlib:
        code += "sys.modules['matplotlib'] = None  # import matplotlib raises ImportError\n"
    code += "sys.argv = ['plot', *sys.argv[1:]]\n"
    code += "runpy.run_module('benchmarks.plot', run_name='__main__')\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plot_draws_every_row_of_a_run_as_a_png(tmp_path):
    out = tmp_path / "run.png"
    result = run_plot(str(REFERENCE), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plot written to %s" % out
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_plot_without_matplotlib_says_so_and_succeeds(tmp_path):
    out = tmp_path / "run.png"
    result = run_plot(str(REFERENCE), "-o", str(out), block_matplotlib=True)
    assert result.returncode == 0, result.stderr
    assert "matplotlib is not installed" in result.stdout
    assert not out.exists()
