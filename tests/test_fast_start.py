"""What a fresh install does beside, or skips, to start and end sooner, without changing
what it reports: the executable's exit without the interpreter's tear-down
(`kymamesh.cli.end`), and helm's version checked in a thread (`Helm.check_soon`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kymamesh.adapters.helm import Helm
from kymamesh.errors import HelmMissingError


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


# -- the exit -------------------------------------------------------------------------


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


# -- helm's version, checked in a thread ---------------------------------------------------


def _fake_helm(tmp_path: Path, version: str, status: int = 0) -> tuple[str, Path]:
    """A helm that answers `helm version` with `version` (and exits `status`), and counts
    how often it ran."""
    calls = tmp_path / "calls"
    helm = tmp_path / "helm"
    helm.write_text(f"#!/bin/sh\necho run >> {calls}\nprintf '%s' '{version}'\nexit {status}\n")
    helm.chmod(0o755)
    return str(helm), calls


def _refusal(helm: Helm) -> str:
    with pytest.raises(HelmMissingError) as caught:
        helm.check()
    return caught.value.message


@pytest.mark.parametrize(
    ("version", "status", "says"),
    [
        ("v3.10.2", 0, "is 3.10.2; kymamesh needs Helm 4 or 3.18+"),
        ("", 1, "cannot run helm at"),
        ("not a version", 0, "cannot run helm at"),
    ],
)
def test_a_helm_refused_in_the_thread_is_refused_by_check_as_without_it(
    tmp_path: Path, version: str, status: int, says: str
) -> None:
    executable, _ = _fake_helm(tmp_path, version, status)
    soon = Helm(executable, None, None)
    soon.check_soon()
    told = _refusal(soon)
    assert says in told
    assert told == _refusal(Helm(executable, None, None))
    assert _refusal(soon) == told  # and again on the next use (helm run again, as before)


def test_a_good_helm_is_run_once_for_its_version(tmp_path: Path) -> None:
    executable, calls = _fake_helm(tmp_path, "v4.0.1")
    helm = Helm(executable, None, None)
    helm.check_soon()
    helm.check_soon()
    helm.check()
    assert helm.version == "4.0.1"
    helm.check_soon()  # known already: nothing more runs
    helm.check()
    assert calls.read_text().count("run") == 1


def test_a_check_never_waited_for_leaves_the_error_of_the_run(tmp_path: Path) -> None:
    """`install` with a helm too old and no cluster to reach: the cluster's error, exit 3,
    as when helm was only checked before the first write."""
    executable, _ = _fake_helm(tmp_path, "v3.10.2")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dead\n"
        "clusters: [{name: dead, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: x}}]\n"
        "contexts: [{name: dead, context: {cluster: dead, user: u}}]\n"
    )
    charts = Path(__file__).resolve().parent / "fixtures" / "charts"
    run = subprocess.run(
        [sys.executable, "-m", "kymamesh", "install", "--charts-dir", str(charts), "-y"],
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig), "KYMAMESH_HELM": executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 3, run.stderr
    assert "cannot reach the Kubernetes API at https://127.0.0.1:9" in run.stderr
    assert "Helm" not in run.stderr
