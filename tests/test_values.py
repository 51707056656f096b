"""Values: merge order, --set parsing, user files by chart, and the security refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from kymamesh.errors import ExitCode, InsecureValuesError, UsageError
from kymamesh.istio.release import pinned
from kymamesh.istio.security import SecurityRule, lookup_value, mesh_config_problems, security_rules
from kymamesh.istio.values import (
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


# -- each value judged as the chart reads it ----------------------------------

AUTO_MTLS = "istiod.meshConfig.enableAutoMtls"


@pytest.mark.parametrize(
    ("text", "typed"),
    [
        ("0", 0),
        ("-0", 0),
        ("12", 12),
        ("-5", -5),
        ("007", "007"),
        ("1.5", "1.5"),
        ("no", "no"),
        ("off", "off"),
        ("False", False),
        ("TRUE", True),
        ("Null", None),
        ("", ""),
        ("1_000", "1_000"),
        ("9223372036854775808", "9223372036854775808"),
    ],
)
def test_set_types_scalars_like_helm(text: str, typed: object) -> None:
    source = parse_set([f"istiod.x={text}"], CHARTS)
    assert source.by_chart["istiod"]["x"] == typed
    assert type(source.by_chart["istiod"]["x"]) is type(typed)


@pytest.mark.parametrize(
    "spelling", ["false", "False", "FALSE", "0", "-0", "no", "No", "off", "OFF", "n", "f", ""]
)
def test_set_refuses_every_spelling_of_auto_mtls_off(spelling: str) -> None:
    stack = ValueStack([project_source(CHARTS), parse_set([f"{AUTO_MTLS}={spelling}"], CHARTS)])
    with pytest.raises(InsecureValuesError) as err:
        check_security(stack, CHARTS)
    assert f"{AUTO_MTLS} from --set" in err.value.message
    assert "reads as off" in err.value.message
    assert err.value.hint


@pytest.mark.parametrize(
    "spelling",
    ['"no"', "no", "0", "off", '"off"', "False", '"false"', '"0"', '""', "0.0", "[]", "{}", "n"],
)
def test_values_file_refuses_every_spelling_of_auto_mtls_off(tmp_path: Path, spelling: str) -> None:
    user = tmp_path / "values.yaml"
    user.write_text(f"istiod:\n  meshConfig:\n    enableAutoMtls: {spelling}\n")
    stack = ValueStack([project_source(CHARTS), load_user_file(user, CHARTS)])
    with pytest.raises(InsecureValuesError) as err:
        check_security(stack, CHARTS)
    assert f"{AUTO_MTLS} from {user}" in err.value.message


@pytest.mark.parametrize(
    "expr",
    [
        "istiod.global.mtls.auto=0",
        "istiod.global.mtls.enabled=off",
        "istiod.meshConfig.meshMTLS.minProtocolVersion=TLSV1_0",
        "istiod.meshConfig.meshMTLS.minProtocolVersion=tlsv1_1",
        "istiod.meshConfig.meshMTLS.minProtocolVersion=3",
        "istiod.meshConfig.meshMTLS.minProtocolVersion=TLSV1_4",
        "istiod.meshConfig.mesh_mTLS.min_protocol_version=TLSV1_0",
        "istiod.meshConfig.meshMTLS.min_protocol_version=TLSV1_1",
        "istiod.meshConfig.mesh_mTLS.minProtocolVersion=TLSV1_0",
        "istiod.meshConfig.enable_auto_mtls=false",
        "istiod.global.proxy.privileged=true",
        "istiod.global.proxy.privileged=yes",
        "istiod.global.proxy.privileged=1",
    ],
)
def test_every_rule_judges_by_meaning(expr: str) -> None:
    stack = ValueStack([project_source(CHARTS), parse_set([expr], CHARTS)])
    with pytest.raises(InsecureValuesError):
        check_security(stack, CHARTS)


@pytest.mark.parametrize(
    "expr",
    [
        f"{AUTO_MTLS}=true",
        f"{AUTO_MTLS}=yes",
        f"{AUTO_MTLS}=1",
        # null drops the key: istiod's own default, auto mTLS on, applies.
        f"{AUTO_MTLS}=null",
        "istiod.meshConfig=null",
        "istiod.global.mtls.auto=null",
        "istiod.meshConfig.meshMTLS.minProtocolVersion=TLSV1_2",
        "istiod.meshConfig.meshMTLS.minProtocolVersion=1",
        "istiod.meshConfig.meshMTLS.minProtocolVersion=2",  # TLSV1_3, not TLSV1_1
        "istiod.meshConfig.meshMTLS.minProtocolVersion=0",
        "istiod.meshConfig.meshMTLS.minProtocolVersion=TLSV1_3",
        "istiod.meshConfig.mesh_mTLS.min_protocol_version=TLSV1_3",
        "istiod.meshConfig.meshMTLS.minProtocolVersion=TLS_AUTO",
        "istiod.global.proxy.privileged=false",
        "istiod.meshConfig.meshMTLS.minProtocolVersion=null",
    ],
)
def test_secure_values_and_nulls_back_to_a_secure_default_pass(expr: str) -> None:
    check_security(ValueStack([project_source(CHARTS), parse_set([expr], CHARTS)]), CHARTS)


def test_null_where_the_default_is_insecure_is_refused_naming_its_source() -> None:
    rule = SecurityRule(chart="istiod", key="a.b", why="off", falsy=True, absent_secure=False)
    assert rule.problem(None, absent=True) == "missing or null, so the default applies: off"
    assert rule.problem(True, absent=False) is None
    stack = ValueStack(
        [
            ValueSource("defaults", {"istiod": {"a": {"b": True}}}),
            parse_set(["istiod.a=null"], CHARTS),
        ]
    )
    assert lookup_value(stack.merged("istiod"), "a.b") == (None, True)
    assert stack.origin_of("istiod", "a.b") == "--set"


def test_rules_are_data_by_meaning() -> None:
    rules = {r.key: r for r in security_rules()}
    assert rules["meshConfig.enableAutoMtls"].falsy
    assert rules["meshConfig.enableAutoMtls"].absent_secure
    assert rules["meshConfig.meshMTLS.minProtocolVersion"].one_of == ("TLSV1_0", "TLSV1_1")


@pytest.mark.parametrize(
    ("mesh", "bad"),
    [
        ({"enableAutoMtls": False}, ["enableAutoMtls"]),
        ({"enableAutoMtls": "no"}, ["enableAutoMtls"]),
        ({"enableAutoMtls": 0}, ["enableAutoMtls"]),
        ({"meshMTLS": {"minProtocolVersion": "TLSV1_1"}}, ["meshMTLS.minProtocolVersion"]),
        ({"mesh_mTLS": {"min_protocol_version": "TLSV1_0"}}, ["mesh_mTLS.min_protocol_version"]),
        ({"enable_auto_mtls": False}, ["enable_auto_mtls"]),
        ({"meshMTLS": {"minProtocolVersion": 2}}, []),
        ({"enableAutoMtls": None}, []),
        ({"enableAutoMtls": True, "meshMTLS": {"minProtocolVersion": "TLSV1_3"}}, []),
        ({}, []),
    ],
)
def test_live_mesh_config_is_judged_by_the_mesh_config_rules(
    mesh: dict[str, object], bad: list[str]
) -> None:
    problems = mesh_config_problems(mesh)
    assert [p.split(":")[0].removeprefix("mesh config ") for p in problems] == bad


# -- Helm's --set syntax (its strvals rules) --------------------------------------


@pytest.mark.parametrize(
    ("exprs", "istiod"),
    [
        (["istiod.a=1,istiod.b=2"], {"a": 1, "b": 2}),
        (["istiod.l[0]=x"], {"l": ["x"]}),
        (["istiod.l[1].n=v"], {"l": [None, {"n": "v"}]}),
        (["istiod.l[0][1]=x"], {"l": [[None, "x"]]}),
        (["istiod.l={a,b,0}"], {"l": ["a", "b", 0]}),
        (["istiod.l={a,b},istiod.z=1"], {"l": ["a", "b"], "z": 1}),
        (["istiod.x=a\\,b"], {"x": "a,b"}),
        (["istiod.x=a=b"], {"x": "a=b"}),
        (["istiod.x="], {"x": ""}),
        (["istiod.x=[false]"], {"x": "[false]"}),  # Helm: a string, not a list
        (["istiod.l[0]=x", "istiod.l[1]=y"], {"l": ["x", "y"]}),  # one map across flags
    ],
)
def test_set_takes_helms_forms(exprs: list[str], istiod: dict[str, object]) -> None:
    assert parse_set(exprs, CHARTS).by_chart["istiod"] == istiod


def test_set_comma_separates_pairs_never_folds_into_the_value() -> None:
    source = parse_set(["istiod.meshConfig.enableAutoMtls=false,istiod.pilot.x=1"], CHARTS)
    assert source.by_chart["istiod"] == {
        "meshConfig": {"enableAutoMtls": False},
        "pilot": {"x": 1},
    }
    with pytest.raises(InsecureValuesError):  # the false is seen, not "false,istiod..."
        check_security(ValueStack([project_source(CHARTS), source]), CHARTS)


@pytest.mark.parametrize(
    ("expr", "said"),
    [
        ("istiod.a=1,b=2", "'b' is not a chart name"),
        ("istiod.a", "has no value"),
        ("istiod.a,", "cannot end with ,"),
        ("istiod.l[x]=1", "not a number"),
        ("istiod.l[-1]=1", "not from 0"),
        ("istiod.l={a,b", "must end with '}'"),
        ("istiod.l[0]x=1", "unexpected 'x'"),
        ("istiod.a=1,istiod.a.b=2", "then used as a map"),
    ],
)
def test_set_refuses_what_helm_cannot_read(expr: str, said: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_set([expr], CHARTS)
    assert said in err.value.message and expr in err.value.message
    assert err.value.hint and "\\," in err.value.hint
