"""The command-line layer: one thin module per command; the work is in the pipeline."""

from __future__ import annotations

from typing import NoReturn


def main() -> None:
    """The `kymamesh` command: a quick answer when there is one, else the typer app."""
    import sys

    from kymamesh.cli.quick import answer_quickly

    if answer_quickly(sys.argv[1:]):
        return
    from kymamesh.cli.app import main as run

    run()


def entry() -> NoReturn:
    """The `kymamesh` executable (and `python -m kymamesh`): `main`, then the process ends
    without tearing the interpreter down, as `end` says."""
    try:
        main()
    except SystemExit as exc:
        end(exc.code)
    end(0)


def end(code: object) -> NoReturn:
    """End the process as `sys.exit(code)` would, once the command has run: what the
    interpreter's own exit does that anyone can see (atexit handlers, the output flushed,
    the exit code) is done, but not the tear-down of every module and object of the
    libraries loaded, a fifth of a second of a fresh install. While a thread that is no
    daemon still runs, the interpreter's own exit (which waits for it) is taken instead,
    and so it is under a profiler or tracer (`python -m cProfile`, coverage), which
    writes what it found once the program returns."""
    import atexit
    import os
    import sys
    import threading

    if (
        sys.getprofile() is not None
        or sys.gettrace() is not None
        or any(
            t is not threading.current_thread() and not t.daemon and t.is_alive()
            for t in threading.enumerate()
        )
    ):
        raise SystemExit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # as sys.exit("message"): the message on stderr, exit code 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: as Python's own exit says it
            status = status or 120
    os._exit(status)
