"""The patch list: step settings given by the user are checked against what each step takes."""

from __future__ import annotations

import pytest

from kymamesh.errors import ExitCode, UsageError
from kymamesh.resources import load_yaml, patches_dir
from kymamesh.workflows import patching


def test_every_default_parameter_is_declared_by_its_kind() -> None:
    kinds = patching.step_kinds()
    for entry in load_yaml(patches_dir() / "kyma.yaml")["steps"]:
        declared = kinds[entry["kind"]].PARAMS
        assert set(entry.get("params") or {}) <= declared, entry["name"]


def test_unknown_parameter_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(UsageError) as err:
        patching.load_patch_list({"sidecar-resources": {"bogus": 1, "proxy": {}}})
    assert err.value.exit_code == ExitCode.USAGE
    assert "sidecar-resources" in err.value.message and "bogus" in err.value.message
    assert "proxy" not in err.value.message
    assert err.value.hint == "sidecar-resources takes: proxy, proxyInit"


def test_unknown_step_is_still_refused_first() -> None:
    with pytest.raises(UsageError, match="unknown patch steps: nope"):
        patching.load_patch_list({"nope": {"bogus": 1}})


def test_known_parameters_pass() -> None:
    specs = patching.load_patch_list(
        {
            "ingress-gateway-tls": {"domain": "shop.example.com"},
            "restart-proxies": {"restart": True},
        }
    )
    tls = next(s for s in specs if s.name == "ingress-gateway-tls")
    assert tls.params["domain"] == "shop.example.com"


def test_kind_table_matches_the_patch_list() -> None:
    """Every kind the list names is registered, no registered kind is dead, the table is frozen."""
    kinds = patching.step_kinds()
    used = {entry["kind"] for entry in load_yaml(patches_dir() / "kyma.yaml")["steps"]}
    assert used == set(kinds)
    with pytest.raises(TypeError):
        kinds["extra"] = kinds["restart-proxies"]  # type: ignore[index]
