"""The identity file without a cluster: what it becomes (step parameters, Dex's config, Dex's
environment), that secrets stay out of all of it, and each bad input refused by field."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from support_identity import (
    APP_SECRET,
    APP_SECRET_ENV,
    BAD_INPUTS,
    DOMAIN,
    GITHUB_SECRET,
    LDAP_SECRET,
    OIDC_SECRET,
    SECRETS,
    bad_document,
    identity_doc,
    write_identity,
)

from kymamesh.errors import ExitCode, UsageError
from kymamesh.identity import dexfile as idn


@pytest.fixture
def app_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APP_SECRET_ENV, APP_SECRET)


def read(tmp_path: Path) -> tuple[dict, dict[str, str]]:
    return idn.read_identity_file(write_identity(tmp_path, identity_doc(tmp_path)))


def test_file_and_env_secrets_become_references(tmp_path: Path, app_secret: None) -> None:
    params, values = read(tmp_path)
    assert values == {
        "connector.corp.clientSecret": OIDC_SECRET,  # the file's newline is dropped
        "client.app.secret": APP_SECRET,
    }
    corp, adfs, ldap = params["connectors"]
    assert corp["clientSecret"] == {
        "secretRef": {"name": idn.MANAGED_SECRET, "key": "connector.corp.clientSecret"}
    }
    assert ldap["bindPW"] == {"secretRef": {"name": LDAP_SECRET, "key": "password"}}
    assert params["staticClients"][0]["secret"] == {
        "secretRef": {"name": idn.MANAGED_SECRET, "key": "client.app.secret"}
    }
    assert adfs["ca"].startswith("-----BEGIN CERTIFICATE-----")  # the CA's text, not its path
    text = json.dumps(params)
    for secret in SECRETS:
        assert secret not in text


def test_dex_config_names_variables_not_secrets(tmp_path: Path, app_secret: None) -> None:
    params, _ = read(tmp_path)
    identity = idn.parse(params, DOMAIN)
    config = idn.dex_config(identity, DOMAIN)
    env = idn.dex_env(identity)
    assert config["issuer"] == f"https://dex.{DOMAIN}"
    assert config["storage"] == {"type": "kubernetes", "config": {"inCluster": True}}
    by_id = {c["id"]: c for c in config["connectors"]}
    assert [(c["id"], c["type"]) for c in config["connectors"]] == [
        ("corp", "oidc"),
        ("adfs", "saml"),
        ("ldap", "ldap"),
    ]
    corp = by_id["corp"]["config"]
    assert corp["redirectURI"] == f"https://dex.{DOMAIN}/callback"  # the default
    assert corp["clientSecret"].startswith("$" + idn.ENV_PREFIX)
    assert base64.b64decode(by_id["adfs"]["config"]["caData"]).startswith(b"-----BEGIN")
    assert "ca" not in by_id["adfs"]["config"]
    client = config["staticClients"][0]
    assert "secret" not in client and client["secretEnv"].startswith(idn.ENV_PREFIX)
    variables = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env}
    assert variables[corp["clientSecret"][1:]] == {
        "name": idn.MANAGED_SECRET,
        "key": "connector.corp.clientSecret",
    }
    assert variables[by_id["ldap"]["config"]["bindPW"][1:]] == {
        "name": LDAP_SECRET,
        "key": "password",
    }
    assert variables[client["secretEnv"]]["key"] == "client.app.secret"
    text = yaml.safe_dump(config) + json.dumps(env)
    for secret in SECRETS:
        assert secret not in text


def test_none_and_empty(tmp_path: Path) -> None:
    assert idn.parse(idn.disabled_params()).enabled is False
    empty = tmp_path / "empty.yaml"
    empty.write_text("connectors: []\n")
    params, values = idn.read_identity_file(empty)
    assert params == {**idn.disabled_params(), "enabled": True} and values == {}
    identity = idn.parse(params, DOMAIN)
    assert idn.dex_config(identity, DOMAIN)["connectors"] == []


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_names_the_field(tmp_path: Path, app_secret: None, name: str) -> None:
    doc, field, words = bad_document(name, tmp_path)
    path = write_identity(tmp_path, doc)
    with pytest.raises(UsageError) as caught:
        params, _ = idn.read_identity_file(path)
        idn.parse(params, DOMAIN)  # the hosts are checked against the domain in the step
    err = caught.value
    assert err.exit_code == ExitCode.USAGE
    assert f"identity: {field}: " in err.message, err.message
    assert words in err.message, err.message
    assert err.hint


def test_missing_env_and_file_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(APP_SECRET_ENV, raising=False)
    path = write_identity(tmp_path, identity_doc(tmp_path))
    with pytest.raises(UsageError, match=f"environment variable {APP_SECRET_ENV} is not set"):
        idn.read_identity_file(path)
    monkeypatch.setenv(APP_SECRET_ENV, APP_SECRET)
    (tmp_path / "oidc-secret").unlink()
    with pytest.raises(UsageError, match=r"connectors\[0\] \(corp\)\.clientSecret: cannot read"):
        idn.read_identity_file(path)


def test_secret_sources_in_config_are_refused() -> None:
    """`--config` may set the step's parameters, but only with secretRefs."""
    params = {
        **idn.disabled_params(),
        "enabled": True,
        "staticClients": [
            {"id": "a", "redirectURIs": ["https://a.example.com/cb"], "secret": {"env": "X"}}
        ],
    }
    with pytest.raises(UsageError, match="read only from an identity file"):
        idn.parse(params, DOMAIN)


def test_dex_itself_cannot_require_a_token(tmp_path: Path) -> None:
    params = {**idn.disabled_params(), "enabled": True, "requireTokenHosts": [f"dex.{DOMAIN}"]}
    with pytest.raises(UsageError, match="is Dex itself"):
        idn.parse(params, DOMAIN)


def test_variable_names_are_distinct() -> None:
    refs = (idn.SecretRef("a-b", "c"), idn.SecretRef("a", "b-c"), idn.SecretRef("a-b", "c"))
    names = idn.env_names(refs)
    assert len(names) == 2 and len(set(names.values())) == 2


def test_github_connector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GitHub: the client secret from the environment, Dex's callback as the default
    redirect, the organisations kept as they are."""
    monkeypatch.setenv("KM_TEST_GH_SECRET", GITHUB_SECRET)
    doc = {
        "connectors": [
            {
                "type": "github",
                "id": "gh",
                "name": "GitHub",
                "clientID": "kyma",
                "clientSecret": {"env": "KM_TEST_GH_SECRET"},
                "orgs": [{"name": "example", "teams": ["platform"]}],
            }
        ]
    }
    params, values = idn.read_identity_file(write_identity(tmp_path, doc))
    assert values == {"connector.gh.clientSecret": GITHUB_SECRET}
    identity = idn.parse(params, DOMAIN)
    (connector,) = idn.dex_config(identity, DOMAIN)["connectors"]
    assert connector["type"] == "github" and connector["id"] == "gh"
    config = connector["config"]
    assert config["redirectURI"] == f"https://dex.{DOMAIN}/callback"
    assert config["orgs"] == [{"name": "example", "teams": ["platform"]}]
    assert (
        config["clientSecret"]
        == "$"
        + idn.env_names(identity.secret_refs)[
            idn.SecretRef(idn.MANAGED_SECRET, "connector.gh.clientSecret")
        ]
    )
    assert GITHUB_SECRET not in json.dumps(params) + yaml.safe_dump(connector)


# -- the gateway policy and istiod's JWKS fetch (pure parts) -----------------------------------


def test_each_required_host_is_matched_with_and_without_a_port() -> None:
    from kymamesh.steps.identity import host_patterns

    assert host_patterns(["app.example.com", "b.example.com"]) == [
        "app.example.com",
        "app.example.com:*",
        "b.example.com",
        "b.example.com:*",
    ]


def _service(selector: dict[str, str], ports: list[tuple[int, object]]) -> dict[str, object]:
    return {
        "metadata": {"name": "gw", "namespace": "istio-system"},
        "spec": {
            "selector": selector,
            "ports": [{"port": p, "targetPort": t} for p, t in ports],
        },
    }


def test_the_policy_ports_are_the_target_ports_of_the_gateway_service() -> None:
    from kymamesh.steps.identity import service_target_ports

    selector = {"istio": "ingressgateway"}
    pod = {
        "metadata": {"labels": {"istio": "ingressgateway", "app": "istio-ingressgateway"}},
        "spec": {"containers": [{"ports": [{"name": "web", "containerPort": 8081}]}]},
    }
    gateway = _service(
        {"istio": "ingressgateway", "app": "istio-ingressgateway"},
        [(15021, 15021), (80, "web"), (443, 8443)],
    )
    other = _service({"app": "something-else"}, [(80, 9999), (443, 9998)])
    # the named target port resolves through the Pod's container ports
    assert service_target_ports([443, 80], selector, [pod], [other, gateway]) == ["8081", "8443"]
    # no Service has the port: istiod listens on the server port itself
    assert service_target_ports([443, 80], selector, [pod], [other]) == ["80", "443"]
    # no Pods yet (a dry run before phase 1): a Service that selects the gateway counts (a
    # named target port cannot be resolved without them: the port itself stands in)
    assert service_target_ports([443, 80], selector, [], [gateway]) == ["80", "8443"]


def test_the_jwks_block_list_keeps_what_is_there_and_adds_what_is_missing() -> None:
    from kymamesh.steps import _jwks

    assert _jwks.wanted(None) == _jwks.VALUE
    assert _jwks.wanted("") == _jwks.VALUE
    assert _jwks.wanted(_jwks.VALUE) == _jwks.VALUE
    mine = "10.1.0.0/16"
    assert _jwks.wanted(mine) == f"{mine},{_jwks.VALUE}"
    for needed in ("169.254.0.0/16", "fd00:ec2::254/128", "127.0.0.0/8", "fe80::/10"):
        assert needed in _jwks.BLOCKED_CIDRS


def test_the_jwks_block_list_leaves_service_ranges_alone() -> None:
    from kymamesh.steps import _jwks

    # usual Service ranges: kubeadm, EKS, AKS, GKE, IPv6 unique local
    for net in ("10.96.0.0/12", "172.20.0.0/16", "10.0.0.0/16", "34.118.224.0/20", "fd00::/108"):
        assert _jwks.overlaps([net]) == [], net
    assert _jwks.overlaps(["169.254.0.0/24"]) == [("169.254.0.0/24", "169.254.0.0/16")]
    assert _jwks.overlaps(["fd00:ec2::/64"]) == [("fd00:ec2::/64", "fd00:ec2::254/128")]


def test_setting_the_variable_edits_only_the_discovery_container() -> None:
    from kymamesh.steps import _jwks

    live = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "discovery", "env": [{"name": "A", "value": "1"}]},
                        {"name": "other", "env": [{"name": _jwks.ENV, "value": "x"}]},
                    ]
                }
            }
        }
    }
    patch = _jwks.edit(_jwks.VALUE)(live)
    containers = patch["spec"]["template"]["spec"]["containers"]
    assert containers[0]["env"] == [
        {"name": "A", "value": "1"},
        {"name": _jwks.ENV, "value": _jwks.VALUE},
    ]
    assert containers[1] == live["spec"]["template"]["spec"]["containers"][1]
    assert (
        _jwks.current({"spec": {"template": {"spec": {"containers": containers}}}}) == _jwks.VALUE
    )
    assert _jwks.edit(None)(live) is None  # nothing to remove: no write
