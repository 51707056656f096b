"""The executable's exit without the interpreter's tear-down (`kymamesh.cli.end`): what
anyone can see of an exit (atexit handlers, flushed output, the exit code) is as before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_end_runs_the_atexit_handlers_flushes_and_keeps_the_exit_code() -> None:
    run = _python(
        "import atexit, sys\n"
        "from kymamesh.cli import end\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "print('buffered', end='')\n"
        "sys.stderr.write('to stderr')\n"
        "end(5)\n"
        "print('never')\n"
    )
    assert run.returncode == 5
    assert run.stdout == "bufferedhandler ran\n"
    assert run.stderr == "to stderr"


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (3, 3), (True, 1)])
def test_end_exit_codes_are_those_of_sys_exit(code: object, status: int) -> None:
    run = _python(f"from kymamesh.cli import end\nend({code!r})\n")
    assert (run.returncode, run.stdout, run.stderr) == (status, "", "")


def test_end_with_a_message_says_it_on_stderr_with_exit_code_1() -> None:
    run = _python("from kymamesh.cli import end\nend('it failed')\n")
    assert (run.returncode, run.stderr) == (1, "it failed\n")


def test_end_waits_for_a_thread_that_is_no_daemon() -> None:
    run = _python(
        "import threading, time\n"
        "from kymamesh.cli import end\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    print('thread done', flush=True)\n"
        "threading.Thread(target=late).start()\n"
        "end(4)\n"
    )
    assert (run.returncode, run.stdout) == (4, "thread done\n")


def test_under_a_profiler_end_returns_to_it() -> None:
    """`python -m cProfile -m kymamesh ...` still writes its profile: `end` raises
    SystemExit for the profiler's own code to see."""
    run = _python(
        "import sys\n"
        "from kymamesh.cli import end\n"
        "sys.setprofile(lambda *a: None)\n"
        "try:\n"
        "    end(6)\n"
        "except SystemExit as exc:\n"
        "    sys.setprofile(None)\n"
        "    print('returned', exc.code)\n"
    )
    assert (run.returncode, run.stdout) == (0, "returned 6\n")


def test_the_module_and_the_executable_end_through_entry() -> None:
    main = (Path(__file__).resolve().parent.parent / "kymamesh" / "__main__.py").read_text()
    assert "entry()" in main
    run = subprocess.run(
        [sys.executable, "-m", "kymamesh", "install", "--bogus"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "error: No such option: --bogus" in run.stderr
