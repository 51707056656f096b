"""Exit codes as docs/reference/exit-codes.md documents them, pinned without a cluster:
the numbers, parser errors (with `-o json`, the JSON result), input at fault (usage, 2),
Ctrl-C (130), a bug in a `status` check (1, never 7), a malformed settings ConfigMap (3).
The cluster cases (a refusal made under the lock, zero writes) are in
tests/test_exit_codes_cluster.py."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kymamesh import settings
from kymamesh.errors import ExitCode, InsecureValuesError, KymameshError, PreconditionError
from kymamesh.userfiles import MAX_FILE_BYTES
from kymamesh.workflows import status as mesh
from tests.test_input_errors import GOOD_KUBECONFIG, assert_refused, run_cli
from tests.test_json_contract import assert_result_shape

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reference" / "exit-codes.md"


def test_the_documented_table_is_the_enum() -> None:
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", DOC.read_text(), flags=re.M)
    assert {name: int(code) for code, name in rows} == {c.name: int(c) for c in ExitCode}
    assert "tests/test_exit_codes.py" in DOC.read_text()


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig whose server is not there: nothing below may need the cluster."""
    path = tmp_path / "kubeconfig"
    path.write_text(GOOD_KUBECONFIG)
    return path


# -- parser errors --------------------------------------------------------------------


def run_raw(*args: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kymamesh", *args],
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig), "KYMAMESH_HELM": "/bin/true"},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


PARSER_ERRORS = {
    "a timeout that is no number": (("install", "--timeout", "abc"), "--timeout"),
    "an unknown option": (("install", "--bogus"), "--bogus"),
    "an unknown option of a subcommand": (("upgrade", "promote", "--nope"), "--nope"),
    "a missing value": (("install", "--timeout"), "--timeout"),
    "an unknown command": (("instal",), "instal"),
}


@pytest.mark.parametrize("case", sorted(PARSER_ERRORS))
def test_parser_errors_give_the_json_result_and_a_hint(kubeconfig: Path, case: str) -> None:
    args, named = PARSER_ERRORS[case]
    code, doc, stderr = run_cli(*args, kubeconfig=kubeconfig)
    message = assert_refused(code, doc, stderr, ExitCode.USAGE)
    assert named in message
    assert doc["errors"][0]["code"] == "usage"  # type: ignore[index]
    assert "--help" in doc["errors"][0]["hint"]  # type: ignore[index]


@pytest.mark.parametrize("args", [("install", "-o", "yaml"), ("install", "--timeout", "abc")])
def test_parser_errors_in_text_have_an_error_and_a_hint_line(
    kubeconfig: Path, args: tuple[str, ...]
) -> None:
    run = run_raw(*args, kubeconfig=kubeconfig)
    assert run.returncode == ExitCode.USAGE
    lines = run.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["error", "hint"], run.stderr
    assert args[1] in lines[0]
    assert run.stdout == ""


def test_json_is_recognised_in_every_spelling(kubeconfig: Path) -> None:
    for spelling in (["-o", "json"], ["--output", "json"], ["--output=json"], ["-ojson"]):
        run = run_raw("install", "--bogus", *spelling, kubeconfig=kubeconfig)
        assert run.returncode == ExitCode.USAGE
        assert_result_shape(json.loads(run.stdout))


def test_help_shows_what_the_user_types_not_python_types(kubeconfig: Path) -> None:
    from typer.main import get_command

    from kymamesh.cli.app import app
    from kymamesh.cli.parsing import KymameshCommand

    def walk(command: Any, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
            found += walk(sub, [*path, name])
        return found

    root = get_command(app)
    python_types = re.compile(r"<(str|int|float|path|dir|file|list\[.*?\]|Path)>")
    for path in walk(root, []):
        run = run_raw(*path, "--help", kubeconfig=kubeconfig)
        assert run.returncode == 0, run.stderr
        assert not python_types.search(run.stdout), (path, run.stdout)
    install_help = run_raw("install", "--help", kubeconfig=kubeconfig).stdout
    for shown in ("--timeout SECONDS", "--set CHART.KEY=VALUE", "-f, --values FILE", "--repo URL"):
        assert shown in install_help
    assert KymameshCommand  # the command class that drops the type after an argument


# -- input at fault: usage (2), before any cluster is asked ---------------------------


def _binary_values(tmp: Path) -> list[str]:
    (tmp / "v.yaml").write_text("istiod:\n  pilot:\n    env: {X: !!binary aGVsbG8=}\n")
    return ["install", "-f", str(tmp / "v.yaml")]


def _alias_bomb(tmp: Path) -> list[str]:
    rows = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        rows.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]")
    (tmp / "bomb.yaml").write_text("istiod:\n  bomb:\n" + "".join(f"    {r}\n" for r in rows))
    return ["install", "-f", str(tmp / "bomb.yaml")]


def _big_identity(tmp: Path) -> list[str]:
    path = tmp / "identity.yaml"
    path.write_text("connectors: []\n" + "# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    return ["patch", "--identity", str(path)]


def _alias_config(tmp: Path) -> list[str]:
    path = tmp / "config.yaml"
    path.write_text("x: &r {memory: 1Gi}\nsteps:\n  sidecar-resources: {proxy: {limits: *r}}\n")
    return ["patch", "--config", str(path)]


def _nan_values(tmp: Path) -> list[str]:
    (tmp / "v.yaml").write_text("istiod:\n  pilot:\n    cpu: .nan\n")
    return ["install", "-f", str(tmp / "v.yaml")]


USAGE_CASES: dict[str, tuple[Any, str]] = {
    "--restart-batch 0 of promote": (["upgrade", "promote", "--restart-batch", "0"], "1"),
    "--restart-batch 0% of patch": (
        ["patch", "--restart-proxies", "--restart-batch", "0%"],
        "'0%'",
    ),
    "--restart-batch 150% of rollback": (
        ["upgrade", "rollback", "--restart-batch", "150%"],
        "'150%'",
    ),
    "--restart-batch ten of install": (
        ["install", "--restart-proxies", "--restart-batch", "ten"],
        "'ten'",
    ),
    "--repo ftp://": (["install", "--repo", "ftp://example.com/charts"], "ftp://"),
    "--repo without a host": (["upgrade", "finish", "--repo", "oci://"], "oci://"),
    "an empty namespace": (["inject-namespace", ""], "namespace name"),
    "a namespace that is no DNS label": (["inject-namespace", "Bad_NS"], "Bad_NS"),
    "a Deployment name that is none": (["inject-namespace", "ok", "-d", "a b"], "'a b'"),
    "--dest that cannot be made": (["charts", "pull", "--dest", "/proc/kymamesh/x"], "/proc"),
    "--timeout 1e10": (["install", "--timeout", "1e10"], "--timeout"),
    "--lock-wait 1e10": (["patch", "--lock-wait", "1e10"], "--lock-wait"),
    "!!binary in -f": (_binary_values, "'binary'"),
    "an alias bomb in -f": (_alias_bomb, "alias"),
    "an alias in --config": (_alias_config, "anchor"),
    ".nan in -f": (_nan_values, "finite"),
    "a 1 MiB identity file": (_big_identity, "larger than"),
}


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_input_at_fault_is_a_usage_error(tmp_path: Path, kubeconfig: Path, case: str) -> None:
    args, named = USAGE_CASES[case]
    if callable(args):
        args = args(tmp_path)
    started = time.monotonic()
    code, doc, stderr = run_cli(*args, kubeconfig=kubeconfig)
    assert named in assert_refused(code, doc, stderr, ExitCode.USAGE)
    assert time.monotonic() - started < 30  # refused at once, not after a long parse


def test_an_insecure_mtls_mode_in_config_is_refused_as_insecure_values() -> None:
    """A well-formed setting that weakens security is code 3, as `--set` of an insecure value
    is; a malformed one (unknown step or parameter) is code 2."""
    from kymamesh.steps.mtls import _name_and_mode

    with pytest.raises(InsecureValuesError) as err:
        _name_and_mode({"mode": "PERMISSIVE"})
    assert err.value.exit_code == ExitCode.PRECONDITION
    assert err.value.code == "insecure-values"
    assert _name_and_mode({"mode": "strict"}) == ("default", "STRICT")


# -- Ctrl-C ---------------------------------------------------------------------------


def test_ctrl_c_exits_130_with_the_json_result(tmp_path: Path) -> None:
    """A run stopped by Ctrl-C (SIGINT) while it waits for the API server exits 130."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        conn, _ = server.accept()  # and never answer
        held.append(conn)
        accepted.set()

    threading.Thread(target=accept, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        GOOD_KUBECONFIG.replace("https://127.0.0.1:9", f"https://127.0.0.1:{port}")
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "kymamesh", "status", "-o", "json"],
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig), "KYMAMESH_HELM": "/bin/true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        # as a terminal's shell starts it: pytest-xdist's workers ignore SIGINT, and an
        # ignored signal stays ignored across exec (Python then installs no handler)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert accepted.wait(60), "kymamesh never connected"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.close()
        for conn in held:
            conn.close()
    assert proc.returncode == ExitCode.INTERRUPTED == 130, err
    doc = json.loads(out)
    assert_result_shape(doc)
    assert doc["exitCode"] == 130 and doc["errors"][0]["code"] == "interrupted"
    assert "error: interrupted" in err and "hint: " in err


# -- status: a bug in a check is a bug (1), not an unhealthy mesh (7) ---------------------


def test_a_bug_in_a_status_check_is_not_reported_as_unhealthy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kymamesh.context import Options, RunContext
    from kymamesh.output import Progress, Result
    from kymamesh.workflows.patching import PatchInputs, load_patch_list

    ctx = RunContext(Options(), Result("status"), Progress(quiet=True))
    specs = load_patch_list({})[:1]

    def buggy(*_: Any) -> Any:
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(mesh, "check_all", buggy)
    with pytest.raises(TypeError):
        mesh.check_steps(ctx, PatchInputs(), specs, istio_present=True)

    def refusing(*_: Any) -> Any:
        raise KymameshError("the step cannot tell")

    monkeypatch.setattr(mesh, "check_all", refusing)
    [state] = mesh.check_steps(ctx, PatchInputs(), specs, istio_present=True)
    assert not state.applied and state.error == "the step cannot tell"


# -- the remembered settings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("steps: {a: [\n", "not valid YAML"),
        ("- steps\n", "a YAML list"),
        ("steps: [a]\n", "`steps` is a YAML list"),
        ("steps: {sidecar-resources: 5}\n", "steps.sidecar-resources is a YAML int"),
    ],
)
def test_a_malformed_settings_configmap_is_a_precondition(text: str, found: str) -> None:
    live = {"data": {settings.KEY: text}}
    with pytest.raises(PreconditionError) as err:
        settings._parse(live, "istio-system")
    assert found in err.value.message
    assert err.value.hint and "delete configmap kymamesh-settings" in err.value.hint
    assert settings._parse({"data": {settings.KEY: "steps: {}\n"}}, "istio-system") == {}


def test_the_lock_check_before_a_write_keeps_writes_made_meanwhile() -> None:
    """A run that holds the lock checks it before each write; a write another thread makes
    during that check stays counted (`writes_started` tells a refusal from a failure after
    writes)."""
    from kymamesh.context import Options, RunContext
    from kymamesh.output import Progress, Result

    class Adapter:
        writes = 0

        def fence(self) -> None:
            self.writes += 1  # another thread's write, made while this one checks the lock

        check_lock = fence

    ctx = RunContext(
        options=Options(), result=Result(command="patch"), progress=Progress(quiet=True)
    )
    ctx._cluster = Adapter()  # type: ignore[assignment]
    ctx._locked = True
    ctx.before_write()
    assert ctx.writes_started
