"""Identity against the test cluster: Dex from the stand-in of its chart, exposed through the
gateway, its tokens checked there (objects that the real istiod's validation webhook
admits), a re-run that writes nothing, a connector change that rolls only Dex, identity
turned off, uninstall, adoption, and bad identity files refused with zero writes. Secret
values never reach any output, the release's values or the remembered settings."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support_identity import (
    APP_SECRET,
    APP_SECRET_ENV,
    BAD_INPUTS,
    BIND_PW,
    DOMAIN,
    LDAP_SECRET,
    OIDC_SECRET,
    SECRETS,
    bad_document,
    identity_doc,
    write_identity,
)
from support_lifecycle import get, helm_install_foreign
from test_install_cluster import CHARTS

from kymamesh import settings
from kymamesh.adapters.cluster import parse_quantity
from kymamesh.identity import dexfile as idn
from kymamesh.steps import _jwks

DEX_NS = "kyma-system"
PATCH = ("patch", "--charts-dir", str(CHARTS))  # Dex's chart, when it must be installed
NEW_APP_SECRET = "app-s3cret-new-31aa-never-in-output"


def run(
    c: Any, *args: str, app_secret: str | None = APP_SECRET, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """The real entry point with the app's secret in the environment (as a CI job has it)."""
    env = dict(c.env)
    env["KYMAMESH_HELM"] = str(c.helm)
    env.pop(APP_SECRET_ENV, None)
    if app_secret is not None:
        env[APP_SECRET_ENV] = app_secret
    return subprocess.run(
        [sys.executable, "-m", "kymamesh", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def assert_hidden(text: str, *values: str) -> None:
    for value in values:
        assert value not in text, f"{value!r} in output"
        assert base64.b64encode(value.encode()).decode() not in text, f"base64 of {value!r}"


def user_secret(c: Any) -> None:
    """The LDAP bind password, in a Secret the user made (named by a secretRef)."""
    c.kubectl("create", "namespace", DEX_NS, check=False)
    c.kubectl(
        "create",
        "secret",
        "generic",
        LDAP_SECRET,
        "-n",
        DEX_NS,
        f"--from-literal=password={BIND_PW}",
    )


def secret_data(c: Any, name: str) -> dict[str, str]:
    doc = get(c, "secret", name, "-n", DEX_NS) or {}
    return {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}


def dex_config(c: Any) -> dict[str, Any]:
    return dict(yaml.safe_load(secret_data(c, "dex")["config.yaml"]))


def identity_objects(c: Any) -> dict[str, dict[str, Any] | None]:
    return {
        "PeerAuthentication": get(c, "peerauthentication", "dex", "-n", DEX_NS),
        "VirtualService": get(c, "virtualservice", "dex", "-n", DEX_NS),
        "RequestAuthentication": get(
            c, "requestauthentication", "kyma-dex-jwt", "-n", "istio-system"
        ),
        "AuthorizationPolicy": get(
            c, "authorizationpolicy", "kyma-dex-require-token", "-n", "istio-system"
        ),
    }


def written(writes: Any) -> set[str]:
    """`resource/namespace/name` of each object written (status writes by controllers aside)."""
    found = set()
    for e in writes.events:
        o = e.get("objectRef", {})
        if o.get("subresource"):
            continue
        found.add(f"{o.get('resource')}/{o.get('namespace', '')}/{o.get('name', '')}")
    return found


OBJECTS = (  # what the identity step leaves in kyma-system, by kubectl kind/name
    "serviceaccount/dex",
    "secret/dex",
    "role/dex",
    "rolebinding/dex",
    "service/dex",
    "deployment/dex",
    f"secret/{idn.MANAGED_SECRET}",
    f"secret/{LDAP_SECRET}",
    "virtualservice/dex",
    "peerauthentication/dex",
)


def versions(c: Any) -> dict[str, str]:
    """The resourceVersion of each object of the identity step (a change bumps it)."""
    found = {}
    for name in OBJECTS:
        obj = get(c, name, "-n", DEX_NS)
        found[name] = obj["metadata"]["resourceVersion"] if obj else ""
    for name in (
        "requestauthentication/kyma-dex-jwt",
        "authorizationpolicy/kyma-dex-require-token",
    ):
        obj = get(c, name, "-n", "istio-system")
        found[name] = obj["metadata"]["resourceVersion"] if obj else ""
    return found


# The gateway's Service with target ports other than its ports (as Istio's older
# ingress chart had them): the token policy must name the ports the Pods listen on.
GATEWAY_PORTS = {
    "gateway": {
        "service": {
            "ports": [
                {"name": "status-port", "port": 15021, "protocol": "TCP", "targetPort": 15021},
                {"name": "http2", "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443},
            ]
        }
    }
}


def blocked_cidrs(c: Any) -> dict[str, str | None]:
    """BLOCKED_CIDRS_IN_JWKS_URIS of each istiod's discovery container (None: unset)."""
    found = json.loads(
        c.kubectl(
            "get", "deployments", "-n", "istio-system", "-l", "app=istiod", "-o", "json"
        ).stdout
    )
    result: dict[str, str | None] = {}
    for d in found["items"]:
        (discovery,) = [
            x for x in d["spec"]["template"]["spec"]["containers"] if x["name"] == "discovery"
        ]
        env = {e["name"]: e.get("value") for e in discovery.get("env") or []}
        result[d["metadata"]["name"]] = env.get(_jwks.ENV)
    return result


def test_identity_lifecycle(fresh_cluster: Any, tmp_path: Path) -> None:
    c = fresh_cluster()
    user_secret(c)
    doc = identity_doc(tmp_path)
    path = write_identity(tmp_path, doc)
    ports = tmp_path / "gateway-ports.yaml"
    ports.write_text(yaml.safe_dump(GATEWAY_PORTS))
    args = ("install", "--charts-dir", str(CHARTS), "-f", str(ports), "--identity", str(path))

    # the dry run shows it, and writes nothing
    with c.audit.counting() as writes:
        planned = ok(run(c, *args, "--dry-run", "-o", "json"))
    assert writes.total == 0, writes.describe()
    result = json.loads(planned.stdout)
    step = next(i for p in result["phases"] for i in p["items"] if i["name"] == "identity")
    assert step["outcome"] == "would-change"
    assert f"Secret/{DEX_NS}/{idn.MANAGED_SECRET}" in " ".join(step["changes"])
    assert "HelmRelease/kyma-system/dex: install dex 0.24.0" in step["changes"]
    assert_hidden(planned.stdout + planned.stderr, *SECRETS)

    # install with identity, -v: everything is there; no secret in the output
    installed = ok(run(c, *args, "-y", "-v"))
    assert_hidden(installed.stdout + installed.stderr, *SECRETS)
    release = json.loads(c.helm_run("list", "-n", DEX_NS, "-o", "json").stdout)
    assert [(r["name"], r["chart"], r["status"]) for r in release] == [
        ("dex", "dex-0.24.0", "deployed")
    ]
    config = dex_config(c)
    assert config["issuer"] == f"https://dex.{DOMAIN}"
    assert config["storage"]["type"] == "kubernetes"
    assert [(x["id"], x["type"]) for x in config["connectors"]] == [
        ("corp", "oidc"),
        ("adfs", "saml"),
        ("ldap", "ldap"),
    ]
    assert_hidden(yaml.safe_dump(config), *SECRETS)
    configmaps = json.loads(c.kubectl("get", "configmaps", "-n", DEX_NS, "-o", "json").stdout)
    assert (
        not [  # Dex's configuration is in its Secret only, never in a ConfigMap
            m["metadata"]["name"]
            for m in configmaps["items"]
            if config["issuer"] in json.dumps(m.get("data") or {})
        ]
    )
    assert secret_data(c, idn.MANAGED_SECRET) == {
        "connector.corp.clientSecret": OIDC_SECRET,
        "client.app.secret": APP_SECRET,
    }
    values = c.helm_run("get", "values", "dex", "-n", DEX_NS, "-o", "json").stdout
    assert_hidden(values, *SECRETS)
    remembered = get(c, "configmap", settings.NAME, "-n", "istio-system")
    assert remembered is not None
    assert "corp" in remembered["data"][settings.KEY]
    assert_hidden(json.dumps(remembered), *SECRETS)

    deployment = get(c, "deployment", "dex", "-n", DEX_NS)
    assert deployment is not None
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["sidecar.istio.io/inject"] == "true"
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert {(r["name"], r["key"]) for r in env.values()} == {
        (idn.MANAGED_SECRET, "connector.corp.clientSecret"),
        (idn.MANAGED_SECRET, "client.app.secret"),
        (LDAP_SECRET, "password"),
    }
    pods = json.loads(
        c.kubectl(
            "get", "pods", "-n", DEX_NS, "-l", "app.kubernetes.io/name=dex", "-o", "json"
        ).stdout
    )["items"]
    assert pods, "no Dex Pod"
    containers = {x["name"]: x for x in pods[0]["spec"]["containers"]}
    assert "istio-proxy" in containers, "istiod did not inject Dex's sidecar"
    proxy = containers["istio-proxy"]["resources"]  # Kyma's sidecar resources
    assert parse_quantity(proxy["limits"]["memory"]) == parse_quantity("1024Mi")
    assert parse_quantity(proxy["limits"]["cpu"]) == 1
    assert parse_quantity(proxy["requests"]["memory"]) == parse_quantity("128Mi")

    objects = identity_objects(c)
    assert all(objects.values()), {k: v is not None for k, v in objects.items()}
    ra = objects["RequestAuthentication"]["spec"]
    assert ra["selector"] == {"matchLabels": {"istio": "ingressgateway"}}
    assert ra["jwtRules"][0]["issuer"] == f"https://dex.{DOMAIN}"
    assert ra["jwtRules"][0]["jwksUri"] == "http://dex.kyma-system.svc.cluster.local:5556/keys"
    ap = objects["AuthorizationPolicy"]["spec"]
    assert ap["action"] == "DENY"
    # Istio matches hosts exactly while the gateway also routes `app.DOMAIN:443`: each host
    # with any port too; and only on the gateway's HTTP and HTTPS ports as its Pods listen
    # on them (the Service's target ports), so the rule never denies TCP traffic whole
    operation = ap["rules"][0]["to"][0]["operation"]
    assert operation["hosts"] == [f"app.{DOMAIN}", f"app.{DOMAIN}:*"]
    assert operation["ports"] == ["8080", "8443"]
    assert ap["rules"][0]["from"][0]["source"]["notRequestPrincipals"] == ["*"]
    vs = objects["VirtualService"]["spec"]
    assert vs["hosts"] == [f"dex.{DOMAIN}"] and vs["gateways"] == ["kyma-system/kyma-gateway"]

    # istiod fetches the signing keys itself: never from loopback, link-local or metadata
    # addresses (IST0175 of Istio's analyzer); Dex's Service range is not among them
    assert blocked_cidrs(c) == {"istiod": _jwks.VALUE}
    assert "169.254.0.0/16" in _jwks.BLOCKED_CIDRS and "fd00:ec2::254/128" in _jwks.BLOCKED_CIDRS
    dex_service = get(c, "service", "dex", "-n", DEX_NS)
    assert dex_service is not None
    assert _jwks.overlaps([f"{ip}/32" for ip in dex_service["spec"]["clusterIPs"]]) == []

    # Istio's own analyzer finds neither the DENY rule that would deny TCP traffic (IST0133)
    # nor an istiod that fetches JWKS unrestricted (IST0175)
    analyzed = subprocess.run(
        ["istioctl", "analyze", "-A", "--output-threshold", "Info", "-o", "json"],
        env=c.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert analyzed.returncode in (0, 79), analyzed.stderr  # 79: warnings found
    codes = {m["code"]: m for m in json.loads(analyzed.stdout or "[]")}
    assert "IST0133" not in codes and "IST0175" not in codes, analyzed.stdout

    # istiod's validation webhook admits the policies, and does refuse a broken one
    for kind, obj in objects.items():
        if kind in ("RequestAuthentication", "AuthorizationPolicy"):
            body = {k: obj[k] for k in ("apiVersion", "kind", "spec")}
            body["metadata"] = {"name": f"probe-{kind.lower()}", "namespace": "istio-system"}
            admitted = c.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(body))
            # no warning from istiod's validation (Istio's analyzer reports it as IST0133)
            assert "TCP ports" not in admitted.stderr, admitted.stderr
    # ... which it does give for the rule without its ports: it would deny all TCP traffic
    portless = json.loads(json.dumps(objects["AuthorizationPolicy"]))  # a copy
    portless = {k: portless[k] for k in ("apiVersion", "kind", "spec")}
    portless["metadata"] = {"name": "probe-portless", "namespace": "istio-system"}
    del portless["spec"]["rules"][0]["to"][0]["operation"]["ports"]
    warned = c.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(portless))
    assert "deny all traffic to TCP ports" in warned.stderr, warned.stderr
    broken = {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "probe-broken", "namespace": "istio-system"},
        "spec": {"jwtRules": [{"issuer": "", "jwksUri": "not a url"}]},
    }
    broken_policy = {  # CUSTOM needs the extension provider that decides
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "probe-broken-policy", "namespace": "istio-system"},
        "spec": {"action": "CUSTOM", "rules": [{}]},
    }
    for bad in (broken, broken_policy):
        refused = c.kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False
        )
        assert refused.returncode != 0, bad
        assert "validation.istio.io" in refused.stderr, refused.stderr
        assert "denied the request" in refused.stderr, refused.stderr

    status = run(c, "status", "-o", "json")
    assert status.returncode == 0, status.stdout
    ident = json.loads(status.stdout)["data"]["identity"]
    assert ident["enabled"] is True and ident["ready"] is True
    assert ident["issuer"] == f"https://dex.{DOMAIN}"
    assert ident["release"]["chartVersion"] == "0.24.0"
    assert [x["id"] for x in ident["connectors"]] == ["corp", "adfs", "ldap"]
    assert {o["kind"]: (o["present"], o["matches"]) for o in ident["objects"]} == {
        "PeerAuthentication": (True, True),
        "VirtualService": (True, True),
        "RequestAuthentication": (True, True),
        "AuthorizationPolicy": (True, True),
    }
    text = ok(run(c, "status"))
    assert "connectors: corp (oidc), adfs (saml), ldap (ldap)" in text.stdout
    assert_hidden(status.stdout + text.stdout, *SECRETS)

    # a re-run writes nothing; so does a patch without --identity (remembered)
    with c.audit.counting() as writes:
        ok(run(c, *args, "-y"))
        ok(run(c, "patch", "-y", app_secret=None))
    assert writes.total == 0, writes.describe()

    # a changed secret: the dry-run diff says so without showing it
    diff = ok(run(c, *PATCH, "--identity", str(path), "--dry-run", app_secret=NEW_APP_SECRET))
    assert "client.app.secret: (redacted, changed)" in diff.stdout
    assert_hidden(diff.stdout + diff.stderr, *SECRETS, NEW_APP_SECRET)

    # a changed connector: only Dex's config Secret changes, and Dex rolls
    doc["connectors"][0]["scopes"] = ["openid", "email"]
    doc["connectors"][0]["name"] = "Corporate SSO (new)"
    changed = write_identity(tmp_path, doc, "identity-2.yaml")
    before = get(c, "deployment", "dex", "-n", DEX_NS)
    assert before is not None
    versions_before = versions(c)
    with c.audit.counting() as writes:
        done = ok(run(c, *PATCH, "--identity", str(changed), "-y", "-o", "json"))
    assert_hidden(done.stdout + done.stderr, *SECRETS)
    # Helm 4 applies every object of the release server-side; what changed is what matters
    changed_objects = {k for k, v in versions(c).items() if v != versions_before[k]}
    assert changed_objects == {"secret/dex", "deployment/dex"}, writes.describe()
    assert {w.split("/")[0] for w in written(writes)} <= {
        "leases",  # the run's lock
        "configmaps",  # the remembered settings (the new connector)
        "secrets",  # Helm's release records, Dex's config
        "serviceaccounts",
        "roles",
        "rolebindings",
        "services",
        "deployments",
    }, writes.describe()
    after = get(c, "deployment", "dex", "-n", DEX_NS)
    assert after is not None
    checksum = "checksum/config"
    assert (
        after["spec"]["template"]["metadata"]["annotations"][checksum]
        != before["spec"]["template"]["metadata"]["annotations"][checksum]
    )
    assert dex_config(c)["connectors"][0]["name"] == "Corporate SSO (new)"

    # identity off: everything it made goes; the user's Secret stays
    off = ok(run(c, "patch", "--identity", "none", "-y", app_secret=None))
    assert_hidden(off.stdout + off.stderr, *SECRETS)
    assert json.loads(c.helm_run("list", "-n", DEX_NS, "-o", "json").stdout) == []
    assert not any(identity_objects(c).values())
    assert get(c, "secret", idn.MANAGED_SECRET, "-n", DEX_NS) is None
    assert get(c, "secret", LDAP_SECRET, "-n", DEX_NS) is not None
    assert blocked_cidrs(c) == {"istiod": None}
    status = run(c, "status", "-o", "json", app_secret=None)
    assert status.returncode == 0, status.stdout
    assert json.loads(status.stdout)["data"]["identity"]["enabled"] is False
    with c.audit.counting() as writes:
        ok(run(c, "patch", "-y", app_secret=None))  # off is remembered: nothing to do
    assert writes.total == 0, writes.describe()

    # on again, then uninstall: identity first, then Istio
    ok(run(c, *PATCH, "--identity", str(path), "-y"))
    gone = ok(run(c, "uninstall", "-y", "-o", "json", app_secret=None))
    assert_hidden(gone.stdout + gone.stderr, *SECRETS)
    data = json.loads(gone.stdout)["data"]
    assert data["releases"][0] == "dex"
    assert f"Secret/{DEX_NS}/{idn.MANAGED_SECRET}" in " ".join(data["patchObjects"])
    assert json.loads(c.helm_run("list", "-n", DEX_NS, "-o", "json").stdout) == []
    assert not any(identity_objects(c).values())
    assert get(c, "secret", idn.MANAGED_SECRET, "-n", DEX_NS) is None


def test_adoption_with_identity(fresh_cluster: Any, tmp_path: Path) -> None:
    """`patch --existing-istio --identity FILE` on an Istio installed with plain Helm."""
    c = fresh_cluster()
    helm_install_foreign(c)
    user_secret(c)
    path = write_identity(tmp_path, identity_doc(tmp_path))
    args = ("patch", "--existing-istio", "--charts-dir", str(CHARTS), "--identity", str(path))
    done = ok(run(c, *args, "-y"))
    assert_hidden(done.stdout + done.stderr, *SECRETS)
    assert [
        r["name"] for r in json.loads(c.helm_run("list", "-n", DEX_NS, "-o", "json").stdout)
    ] == ["dex"]
    assert all(identity_objects(c).values())
    with c.audit.counting() as writes:
        ok(run(c, *args, "-y"))
    assert writes.total == 0, writes.describe()


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_identity_file_is_refused_with_zero_writes(
    cluster: Any, tmp_path: Path, name: str
) -> None:
    doc, field, words = bad_document(name, tmp_path)
    path = write_identity(tmp_path, doc)
    with cluster.audit.counting() as writes:
        done = run(
            cluster, "install", "--charts-dir", str(CHARTS), "--identity", str(path), "-o", "json"
        )
    assert writes.total == 0, writes.describe()
    assert done.returncode == 2, done.stdout + done.stderr
    error = json.loads(done.stdout)["errors"][0]
    assert f"identity: {field}: " in error["message"] and words in error["message"], error
    assert error["hint"]
    assert_hidden(done.stdout + done.stderr, *SECRETS)


def test_missing_secret_reference_is_refused_with_zero_writes(cluster: Any, tmp_path: Path) -> None:
    """A secretRef to a Secret that does not exist: exit 3, before any write."""
    doc = identity_doc(tmp_path)
    doc["connectors"][2]["bindPW"] = {"secretRef": {"name": "no-such-secret", "key": "password"}}
    path = write_identity(tmp_path, doc)
    with cluster.audit.counting() as writes:
        done = run(
            cluster, "install", "--charts-dir", str(CHARTS), "--identity", str(path), "-o", "json"
        )
    assert writes.total == 0, writes.describe()
    assert done.returncode == 3, done.stdout + done.stderr
    error = json.loads(done.stdout)["errors"][0]
    assert f"Secret {DEX_NS}/no-such-secret" in error["message"] and "create it" in error["hint"]
    assert_hidden(done.stdout + done.stderr, *SECRETS)


def test_env_secret_missing_is_refused_with_zero_writes(cluster: Any, tmp_path: Path) -> None:
    path = write_identity(tmp_path, identity_doc(tmp_path))
    with cluster.audit.counting() as writes:
        done = run(
            cluster,
            "install",
            "--charts-dir",
            str(CHARTS),
            "--identity",
            str(path),
            "-o",
            "json",
            app_secret=None,
        )
    assert writes.total == 0, writes.describe()
    assert done.returncode == 2, done.stdout + done.stderr
    assert APP_SECRET_ENV in json.loads(done.stdout)["errors"][0]["message"]


def annotations(c: Any) -> dict[str, str]:
    deployment = get(c, "deployment", "dex", "-n", DEX_NS)
    assert deployment is not None
    return dict(deployment["spec"]["template"]["metadata"].get("annotations") or {})


def identity_item(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    result = json.loads(done.stdout)
    return dict(next(i for p in result["phases"] for i in p["items"] if i["name"] == "identity"))


def test_a_changed_secret_restarts_dex_and_changes_nothing_else(
    fresh_cluster: Any, tmp_path: Path
) -> None:
    """A Secret Dex reads changes (the user's, named by a secretRef; or kymamesh's own, from
    the environment): the next run rolls Dex and leaves its config Secret alone."""
    c = fresh_cluster()
    user_secret(c)
    path = write_identity(tmp_path, identity_doc(tmp_path))
    ok(run(c, "install", "--charts-dir", str(CHARTS), "--identity", str(path), "-y"))
    config = secret_data(c, "dex")

    # the user rotates the LDAP bind password in their own Secret
    new_pw = "bind-pw-new-7e02-never-in-output"
    c.kubectl(
        "patch",
        "secret",
        LDAP_SECRET,
        "-n",
        DEX_NS,
        "--type=merge",
        "-p",
        json.dumps({"data": {"password": base64.b64encode(new_pw.encode()).decode()}}),
    )
    rotated = get(c, "secret", LDAP_SECRET, "-n", DEX_NS)
    assert rotated is not None
    with c.audit.counting() as writes:
        planned = ok(run(c, *PATCH, "--dry-run", "-o", "json", app_secret=None))
    assert writes.total == 0, writes.describe()
    item = identity_item(planned)
    assert item["outcome"] == "would-change"
    assert item["changes"] == [
        f"HelmRelease/{DEX_NS}/dex: restart: Secret {LDAP_SECRET} that Dex reads changed"
    ], item
    assert_hidden(planned.stdout + planned.stderr, *SECRETS, new_pw)
    status = run(c, "status", "-o", "json", app_secret=None)  # not healthy: a step is pending
    (step,) = [s for s in json.loads(status.stdout)["data"]["steps"] if s["name"] == "identity"]
    assert step["applied"] is False and step["pending"] == item["changes"], step
    assert_hidden(status.stdout + status.stderr, *SECRETS, new_pw)

    before, versions_before = annotations(c), versions(c)
    done = ok(run(c, *PATCH, "-y", "-v", app_secret=None))
    assert_hidden(done.stdout + done.stderr, *SECRETS, new_pw)
    changed = {k for k, v in versions(c).items() if v != versions_before[k]}
    assert changed == {"deployment/dex"}, changed
    after = annotations(c)
    assert after["checksum/config"] == before["checksum/config"]  # the same configuration
    marker = "kymamesh.io/secret-versions"
    assert after[marker] != before[marker]
    assert f"{LDAP_SECRET}={rotated['metadata']['resourceVersion']}" in after[marker]
    assert secret_data(c, "dex") == config
    with c.audit.counting() as writes:
        ok(run(c, "patch", "-y", app_secret=None))
    assert writes.total == 0, writes.describe()

    # the app's secret, read from the environment, changes: kymamesh's Secret and Dex only
    before, versions_before = annotations(c), versions(c)
    with c.audit.counting() as writes:
        done = ok(
            run(
                c,
                *PATCH,
                "--identity",
                str(path),
                "-y",
                "-o",
                "json",
                "-v",
                app_secret=NEW_APP_SECRET,
            )
        )
    assert_hidden(done.stdout + done.stderr, *SECRETS, new_pw, NEW_APP_SECRET)
    changed = {k for k, v in versions(c).items() if v != versions_before[k]}
    assert changed == {f"secret/{idn.MANAGED_SECRET}", "deployment/dex"}, writes.describe()
    assert secret_data(c, idn.MANAGED_SECRET)["client.app.secret"] == NEW_APP_SECRET
    after = annotations(c)
    assert after["checksum/config"] == before["checksum/config"]
    assert after[marker] != before[marker]
    assert secret_data(c, "dex") == config
    remembered = get(c, "configmap", settings.NAME, "-n", "istio-system")
    assert_hidden(json.dumps(remembered), *SECRETS, new_pw, NEW_APP_SECRET)
    with c.audit.counting() as writes:
        ok(run(c, *PATCH, "--identity", str(path), "-y", app_secret=NEW_APP_SECRET))
    assert writes.total == 0, writes.describe()


def test_a_dex_kymamesh_did_not_install_is_refused_and_left_alone(
    fresh_cluster: Any, tmp_path: Path
) -> None:
    """A Helm release `dex` in kyma-system that someone else installed: `--identity` is
    refused before any write (exit 3, what to do named); turning identity off and
    uninstalling leave that Dex where it is."""
    c = fresh_cluster()
    ok(run(c, "install", "--charts-dir", str(CHARTS), "-y"))
    c.helm_run("install", "dex", str(CHARTS / "dex"), "-n", DEX_NS, "--create-namespace")
    user_secret(c)
    path = write_identity(tmp_path, identity_doc(tmp_path))
    for command in ("install", "patch"):
        with c.audit.counting() as writes:
            done = run(
                c, command, "--charts-dir", str(CHARTS), "--identity", str(path), "-y", "-o", "json"
            )
        assert writes.total == 0, writes.describe()
        assert done.returncode == 3, done.stdout + done.stderr
        error = json.loads(done.stdout)["errors"][0]
        assert (
            f"Helm release {DEX_NS}/dex exists and was not installed by kymamesh"
            in (error["message"])
        ), error
        assert f"helm uninstall dex -n {DEX_NS}" in error["hint"], error
        assert_hidden(done.stdout + done.stderr, *SECRETS)

    status = json.loads(ok(run(c, "status", "-o", "json")).stdout)["data"]["identity"]
    assert status["enabled"] is False
    assert status["release"]["byKymamesh"] is False
    text = ok(run(c, "status")).stdout
    assert "identity: off (the Dex below is not kymamesh's: left alone)" in text, text
    assert "deployed, ready, not installed by kymamesh" in text, text

    foreign = get(c, "deployment", "dex", "-n", DEX_NS)
    assert foreign is not None
    ok(run(c, "patch", "--identity", "none", "-y"))
    ok(run(c, "uninstall", "-y"))
    assert [
        r["name"] for r in json.loads(c.helm_run("list", "-n", DEX_NS, "-o", "json").stdout)
    ] == ["dex"]
    left = get(c, "deployment", "dex", "-n", DEX_NS)
    assert left is not None
    assert left["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"]

    # a Dex applied without Helm (its chart rendered, then kubectl apply): refused as well
    c.helm_run("uninstall", "dex", "-n", DEX_NS, "--wait")
    rendered = c.helm_run("template", "dex", str(CHARTS / "dex"), "-n", DEX_NS).stdout
    c.kubectl("apply", "-n", DEX_NS, "-f", "-", input=rendered)
    refused = refused_with_zero_writes(c, path)
    assert "exists and was made by something other than Helm" in refused["message"], refused
    assert f"for the Helm release {DEX_NS}/dex" in refused["message"], refused
    assert "kubectl delete" in refused["hint"], refused

    # a Secret of the user's named like Dex's config Secret (and named by a secretRef)
    c.kubectl("delete", "-n", DEX_NS, "-f", "-", input=rendered)
    c.kubectl(
        "create", "secret", "generic", "dex", "-n", DEX_NS, f"--from-literal=password={BIND_PW}"
    )
    doc = identity_doc(tmp_path)
    doc["connectors"][2]["bindPW"] = {"secretRef": {"name": "dex", "key": "password"}}
    refused = refused_with_zero_writes(c, write_identity(tmp_path, doc, "named-dex.yaml"))
    assert refused["message"].startswith(
        f"identity: Secret/{DEX_NS}/dex exists and was made by something other than Helm"
    ), refused
    assert "rename it if it is yours" in refused["hint"], refused


def refused_with_zero_writes(c: Any, path: Path) -> dict[str, str]:
    """`install --identity FILE`: refused with exit 3 before any write; the error."""
    with c.audit.counting() as writes:
        done = run(c, "install", "--charts-dir", str(CHARTS), "--identity", str(path), "-o", "json")
    assert writes.total == 0, writes.describe()
    assert done.returncode == 3, done.stdout + done.stderr
    assert_hidden(done.stdout + done.stderr, *SECRETS)
    return dict(json.loads(done.stdout)["errors"][0])
