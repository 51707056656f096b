"""Values: merge order, --set parsing, user files by chart, and the security refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from kymamesh.errors import ExitCode, InsecureValuesError, UsageError
from kymamesh.release import pinned
from kymamesh.values import (
    ValueSource,
    ValueStack,
    check_security,
    deep_merge,
    load_user_file,
    parse_set,
    project_source,
)

CHARTS = ("base", "istiod", "gateway")


def test_deep_merge_keeps_siblings_and_replaces_leaves() -> None:
    merged = deep_merge({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": 3}, "l": [2]})
    assert merged == {"a": {"b": 3, "c": 2}, "l": [2]}


def test_set_types_values_like_helm() -> None:
    source = parse_set(
        ["istiod.meshConfig.enableAutoMtls=false", "istiod.pilot.replicaCount=2", "gateway.x=y"],
        CHARTS,
    )
    assert source.by_chart["istiod"] == {
        "meshConfig": {"enableAutoMtls": False},
        "pilot": {"replicaCount": 2},
    }
    assert source.by_chart["gateway"] == {"x": "y"}


@pytest.mark.parametrize("expr", ["nochart", "unknown.key=1", "istiod=1", "=1"])
def test_set_refuses_keys_without_a_chart(expr: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_set([expr], CHARTS)
    assert err.value.exit_code == ExitCode.USAGE


def test_user_file_must_be_keyed_by_chart(tmp_path: Path) -> None:
    bad = tmp_path / "v.yaml"
    bad.write_text("meshConfig:\n  enableAutoMtls: false\n")
    with pytest.raises(UsageError, match="not charts"):
        load_user_file(bad, CHARTS)


def test_insecure_value_names_key_and_file(tmp_path: Path) -> None:
    user = tmp_path / "insecure.yaml"
    user.write_text("istiod:\n  meshConfig:\n    enableAutoMtls: false\n")
    stack = ValueStack([project_source(CHARTS), load_user_file(user, CHARTS)])
    with pytest.raises(InsecureValuesError) as err:
        check_security(stack, CHARTS)
    assert "istiod.meshConfig.enableAutoMtls" in err.value.message
    assert str(user) in err.value.message
    assert err.value.exit_code == ExitCode.PRECONDITION


def test_insecure_set_names_the_flag() -> None:
    stack = ValueStack(
        [project_source(CHARTS), parse_set(["istiod.global.mtls.auto=false"], CHARTS)]
    )
    with pytest.raises(InsecureValuesError, match=r"--set"):
        check_security(stack, CHARTS)


def test_later_sources_win_and_secure_override_passes() -> None:
    stack = ValueStack(
        [
            ValueSource("a", {"istiod": {"meshConfig": {"enableAutoMtls": False}}}),
            ValueSource("b", {"istiod": {"meshConfig": {"enableAutoMtls": True}}}),
        ]
    )
    check_security(stack, CHARTS)
    assert stack.merged("istiod")["meshConfig"]["enableAutoMtls"] is True


def test_project_values_turn_security_on() -> None:
    stack = ValueStack([project_source(CHARTS)])
    assert stack.merged("istiod")["meshConfig"]["enableAutoMtls"] is True
    assert [r.chart for r in pinned().releases] == list(CHARTS)


def test_set_escaped_dot_stays_in_the_name() -> None:
    source = parse_set(["istiod.nodeSelector.example\\.com/pool=mesh"], CHARTS)
    assert source.by_chart["istiod"] == {"nodeSelector": {"example.com/pool": "mesh"}}
