"""Bad input that never reaches a cluster: kubeconfig, values and --config files, waits, domain.
Each is refused with an error line, a hint (in text and in `-o json`) and its documented code,
never exit 1 "unexpected error"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kymamesh.cli.patch_options import read_config
from kymamesh.errors import ExitCode, UsageError
from kymamesh.istio.values import load_user_file
from tests.test_json_contract import assert_result_shape

CHARTS = ("base", "istiod", "gateway")
GOOD_KUBECONFIG = (
    "apiVersion: v1\nkind: Config\ncurrent-context: dead\n"
    "clusters: [{name: dead, cluster: {server: 'https://127.0.0.1:9'}}]\n"
    "users: [{name: u, user: {token: x}}]\n"
    "contexts: [{name: dead, context: {cluster: dead, user: u}}]\n"
)


def run_cli(*args: str, kubeconfig: Path) -> tuple[int, dict[str, object], str]:
    """The real entry point with -o json and no cluster to reach; (code, result, stderr)."""
    run = subprocess.run(
        [sys.executable, "-m", "kymamesh", *args, "-o", "json"],
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig), "KYMAMESH_HELM": "/bin/true"},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    doc = json.loads(run.stdout)
    assert_result_shape(doc)
    return run.returncode, doc, run.stderr


def assert_refused(code: int, doc: dict[str, object], stderr: str, expected: ExitCode) -> str:
    """Refused with `expected`; an error and a hint in JSON and on stderr. Returns the message."""
    assert code == expected, (doc, stderr)
    assert doc["exitCode"] == expected and doc["status"] == "refused"
    errors = doc["errors"]
    assert isinstance(errors, list) and len(errors) == 1
    assert errors[0]["hint"], errors
    assert "unexpected error" not in errors[0]["message"]
    assert "error: " in stderr and "hint: " in stderr
    return str(errors[0]["message"])


# -- kubeconfig ---------------------------------------------------------------

KUBECONFIGS = {
    "garbled": ("apiVersion: v1\nclusters: [unclosed\n  : :\n", "is not valid YAML"),
    "empty": ("", "is empty"),
    "only a comment": ("# nothing here\n", "is empty"),
    "a list": ("- a\n- b\n", "a YAML list, not a map"),
    "a string": ("just words\n", "a YAML str, not a map"),
    "wrong structure": ("contexts: 5\nclusters: x\n", "structure is not a kubeconfig's"),
    "not UTF-8": (b"\xff\xfe\x00bad".decode("latin-1"), "is not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(KUBECONFIGS))
def test_bad_kubeconfig_is_a_clear_precondition_error(tmp_path: Path, case: str) -> None:
    text, expected = KUBECONFIGS[case]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_bytes(text.encode("latin-1"))
    message = assert_refused(*run_cli("status", kubeconfig=kubeconfig), ExitCode.PRECONDITION)
    assert expected in message and str(kubeconfig) in message


def test_directory_as_kubeconfig_is_a_clear_precondition_error(tmp_path: Path) -> None:
    code, doc, err = run_cli("install", "--kubeconfig", str(tmp_path), "-y", kubeconfig=tmp_path)
    message = assert_refused(code, doc, err, ExitCode.PRECONDITION)
    assert message == f"cannot read kubeconfig {tmp_path}: it is a directory"


# -- values files and --config ------------------------------------------------

BAD_FILES = {
    "missing": (None, "cannot read"),
    "a directory": ("<dir>", "it is a directory"),
    "malformed": ("istiod: [1,\n", "is not valid YAML"),
    "a list": ("- istiod\n", "a YAML list"),
}


def _bad_file(tmp_path: Path, case: str) -> Path:
    content, _ = BAD_FILES[case]
    path = tmp_path / "input.yaml"
    if content == "<dir>":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    return path


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_values_file_is_a_usage_error_with_a_hint(tmp_path: Path, case: str) -> None:
    path = _bad_file(tmp_path, case)
    with pytest.raises(UsageError) as err:
        load_user_file(path, CHARTS)
    assert BAD_FILES[case][1] in err.value.message
    assert err.value.hint and "chart name" in err.value.hint
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(GOOD_KUBECONFIG)
    code, doc, stderr = run_cli("install", "-f", str(path), "-y", kubeconfig=kubeconfig)
    assert BAD_FILES[case][1] in assert_refused(code, doc, stderr, ExitCode.USAGE)


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_config_file_is_a_usage_error_with_a_hint(tmp_path: Path, case: str) -> None:
    path = _bad_file(tmp_path, case)
    with pytest.raises(UsageError) as err:
        read_config(path)
    assert BAD_FILES[case][1] in err.value.message
    assert err.value.hint and "steps:" in err.value.hint
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(GOOD_KUBECONFIG)
    code, doc, stderr = run_cli("patch", "--config", str(path), "-y", kubeconfig=kubeconfig)
    assert BAD_FILES[case][1] in assert_refused(code, doc, stderr, ExitCode.USAGE)


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ("sidecar-resources: {}\n", "keys sidecar-resources"),
        ("steps: [a]\n", "`steps` is a YAML list"),
        ("{}\n", "no `steps`"),
        ("steps:\n  injection-policy: disabled\n", "steps.injection-policy must be a map"),
    ],
)
def test_config_of_the_wrong_shape_says_what_it_found(
    tmp_path: Path, content: str, found: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(content)
    with pytest.raises(UsageError) as err:
        read_config(path)
    assert found in err.value.message and err.value.hint


def test_values_file_chart_entry_not_a_map_has_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text("istiod: 3\n")
    with pytest.raises(UsageError) as err:
        load_user_file(path, CHARTS)
    assert "'istiod' must be a map, not a YAML int" in err.value.message
    assert err.value.hint


# -- waits and the domain -----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--timeout", "inf"),
        ("--timeout", "nan"),
        ("--timeout", "-5"),
        ("--timeout", "0.5"),
        ("--lock-wait", "inf"),
        ("--lock-wait", "-1"),
        ("--domain", ""),
        ("--domain", "  "),
    ],
)
def test_bad_wait_or_empty_domain_is_refused(tmp_path: Path, args: tuple[str, str]) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(GOOD_KUBECONFIG)
    code, doc, stderr = run_cli("install", *args, "-y", kubeconfig=kubeconfig)
    message = assert_refused(code, doc, stderr, ExitCode.USAGE)
    assert args[0] in message
