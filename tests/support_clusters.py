"""Test clusters started ahead of need, and stopped behind the tests (used by conftest.py).

Starting a test cluster takes 10-20 s, most of it the kube-apiserver getting ready, and
stopping one 2-3 s. The fixtures in conftest.py ask this module for clusters:

- `pool.take()` hands over a cluster that was started in the background while earlier
  tests ran (`pool.prefetch()`), or None when none was started: the caller then starts one
  itself, as before. A spare is a cluster no test has touched, exactly as `up` left it.
- `pool.stop_later(directory)` stops a cluster in the background; `pool.close()` (at the
  end of the session) waits for those and stops an unused spare.

conftest.py decides when to prefetch: when the test that runs next, or a later one of the
same module, starts a cluster of its own (`fresh_cluster`, or a module fixture calling
`_start`), and for the session's `cluster` while the tests before the first cluster test run.

This module is imported once per process (conftest.py is imported twice: as `conftest` by
pytest and as `tests.conftest` by test modules), so there is one pool per pytest process
(per xdist worker).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TESTCLUSTER_PY = Path(__file__).resolve().parent / "cluster" / "testcluster.py"


class Starting:
    """`testcluster.py up --dir DIR` running in the background."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.log = directory.with_name(directory.name + ".up.log")
        self.started = time.monotonic()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(TESTCLUSTER_PY), "up", "--dir", str(directory)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait(self, timeout: float = 600) -> Path:
        """The cluster's folder once it is up; RuntimeError (with up's output) if it failed."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise RuntimeError(
                f"testcluster.py up --dir {self.dir}: no cluster after {timeout}s"
            ) from None
        if code != 0:
            self.cancel()
            raise RuntimeError(
                f"testcluster.py up --dir {self.dir} failed ({code}):\n{self._output()}"
            )
        return self.dir

    def cancel(self) -> None:
        """Stop it, whether it is still starting or already up (up stops what it started
        on SIGTERM; down stops whatever it left)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            subprocess.run(
                [sys.executable, str(TESTCLUSTER_PY), "down", "--dir", str(self.dir), "--keep"],
                capture_output=True,
                timeout=120,
            )

    def _output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


class Pool:
    """At most one spare cluster at a time, and the clusters being stopped."""

    def __init__(self) -> None:
        self.spare: Starting | None = None
        self.stopping: list[subprocess.Popen[bytes]] = []
        self.make_dir: Callable[[], Path] | None = None  # set by conftest.py
        self.enabled = os.environ.get("KYMAMESH_TEST_PREFETCH", "1") != "0"
        self.taken = 0  # spares handed over (for the session's summary line)
        self.started = 0

    def prefetch(self) -> None:
        """Start a spare in the background, unless one is there or starting."""
        if not self.enabled or self.spare is not None or self.make_dir is None:
            return
        self.spare = Starting(self.make_dir())
        self.started += 1

    def take(self, timeout: float = 600) -> Path | None:
        """The spare's folder once it is up (waiting for it if it is still starting);
        None when there is no spare or it failed to start (the caller starts one itself)."""
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        try:
            directory = spare.wait(timeout)
        except RuntimeError as e:
            print(f"\n[support_clusters] a spare cluster did not start: {e}", file=sys.stderr)
            return None
        self.taken += 1
        return directory

    def stop_later(self, directory: Path) -> None:
        """`testcluster.py down --dir DIR --keep` in the background."""
        self.stopping = [p for p in self.stopping if p.poll() is None]
        self.stopping.append(
            subprocess.Popen(
                [sys.executable, str(TESTCLUSTER_PY), "down", "--dir", str(directory), "--keep"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def close(self) -> None:
        """Stop an unused spare and wait for the clusters being stopped."""
        spare, self.spare = self.spare, None
        if spare is not None:
            spare.cancel()
        for p in self.stopping:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
        self.stopping = []


pool = Pool()
