"""`-v` shows helm's own output (its stderr, with --debug for the commands that write) on
the test cluster's real helm; values (which go to helm on its standard input) stay out."""

from __future__ import annotations

from typing import Any

from tests.support_lifecycle import CHARTS, install, kymamesh

MARK = "kymamesh-verbose-value-4711"


def test_verbose_shows_helms_own_output_and_no_values(cluster: Any) -> None:
    install(cluster)
    args = ("install", "--charts-dir", str(CHARTS), "-y", "--set", f"istiod.pilot.env.X={MARK}")
    run = kymamesh(cluster, *args, "-v")
    assert run.code == 0, str(run)
    helm_lines = [line for line in run.stderr.splitlines() if line.startswith("helm: ")]
    assert any('msg="preparing upgrade" name=istiod' in line for line in helm_lines), run.stderr
    assert MARK not in run.stderr and MARK not in run.stdout
    quiet = kymamesh(cluster, *args[:-2])  # back to the plain values, without -v
    assert quiet.code == 0, str(quiet)
    assert not [line for line in quiet.stderr.splitlines() if line.startswith("helm: ")]
