"""Secret values a chart renders never reach any output of `install`: the phase-1 dry-run
diff as text and in `-o json`, and everything `-v` prints; the diff still names the keys
and says which are new, changed or unchanged. Charts: the fixture charts plus one Secret."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from support_lifecycle import kymamesh
from test_install_cluster import items

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "tests" / "fixtures" / "charts"
SECRET_REF = "Secret/istio-system/kymamesh-test-credentials"
PASSWORD = "pw-7c1e5b-never-in-output"
TOKEN = "tok-90d2aa-never-in-output"
NEW_PASSWORD = "pw-new-41f3-never-in-output"

TEMPLATE = """\
apiVersion: v1
kind: Secret
metadata:
  name: kymamesh-test-credentials
  namespace: {{{{ .Release.Namespace }}}}
type: Opaque
data:
  password: {password}
stringData:
  token: {token}
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_secret(charts: Path, password: str) -> None:
    template = TEMPLATE.format(password=b64(password), token=TOKEN)
    (charts / "istiod" / "templates" / "test-credentials.yaml").write_text(template)


@pytest.fixture
def charts(tmp_path: Path) -> Path:
    """The fixture charts, with istiod rendering a Secret."""
    target = tmp_path / "charts"
    shutil.copytree(CHARTS, target)
    write_secret(target, PASSWORD)
    return target


def assert_hidden(text: str, *values: str) -> None:
    for value in values:
        assert value not in text, f"{value!r} in output"
        assert b64(value) not in text, f"base64 of {value!r} in output"


def test_dry_run_json_names_keys_and_hides_values(fresh_cluster: Any, charts: Path) -> None:
    c = fresh_cluster()
    with c.audit.counting() as writes:
        run = kymamesh(c, "install", "--charts-dir", str(charts), "--dry-run", "-o", "json")
    assert run.code == 0, str(run)
    diff = items(run.doc, "phase 1")["istiod"]["diff"]
    assert f"+++ wanted {SECRET_REF}" in diff
    assert "+  password: (redacted, new)" in diff
    assert "+  token: (redacted, new)" in diff
    assert_hidden(run.stdout + run.stderr, PASSWORD, TOKEN)
    assert writes.total == 0, writes.describe()


def test_dry_run_text_names_keys_and_hides_values(fresh_cluster: Any, charts: Path) -> None:
    c = fresh_cluster()
    run = kymamesh(c, "install", "--charts-dir", str(charts), "--dry-run")
    assert run.code == 0, str(run)
    assert SECRET_REF in run.stdout
    assert "password: (redacted, new)" in run.stdout
    assert "token: (redacted, new)" in run.stdout
    assert_hidden(run.stdout + run.stderr, PASSWORD, TOKEN)


def test_verbose_runs_hide_values_and_say_what_changed(fresh_cluster: Any, charts: Path) -> None:
    c = fresh_cluster()
    installed = kymamesh(c, "install", "--charts-dir", str(charts), "-y", "-v")
    assert installed.code == 0, str(installed)
    assert "running command" in installed.stderr  # -v shows helm's commands
    assert_hidden(installed.stdout + installed.stderr, PASSWORD, TOKEN)
    live = json.loads(
        c.kubectl(
            "get", "secret", "kymamesh-test-credentials", "-n", "istio-system", "-o", "json"
        ).stdout
    )
    assert base64.b64decode(live["data"]["password"]).decode() == PASSWORD

    write_secret(charts, NEW_PASSWORD)
    # a changed value alone does not make a new release; a changed value file does
    values = charts.parent / "more.yaml"
    values.write_text("istiod:\n  meshConfig:\n    accessLogFile: /dev/stdout\n")
    args = ("install", "--charts-dir", str(charts), "-f", str(values), "--dry-run", "-v")
    text = kymamesh(c, *args)
    assert text.code == 0, str(text)
    assert "      -  password: (redacted)\n" in text.stdout
    assert "      +  password: (redacted, changed)\n" in text.stdout
    assert "token: (redacted, unchanged)" in text.stdout
    assert_hidden(text.stdout + text.stderr, PASSWORD, TOKEN, NEW_PASSWORD)

    as_json = kymamesh(c, *args, "-o", "json")
    assert as_json.code == 0, str(as_json)
    diff = items(as_json.doc, "phase 1")["istiod"]["diff"]
    assert "+  password: (redacted, changed)" in diff
    assert_hidden(as_json.stdout + as_json.stderr, PASSWORD, TOKEN, NEW_PASSWORD)
