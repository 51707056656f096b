"""Step `ingress-gateway-tls` on the test cluster: the Secret and the Gateway are made, a
re-run writes nothing, a certificate near expiry is renewed, a user's pair is installed,
a bad pair is refused before any write, and the private key never shows in any output."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from kymamesh.identity.certs import self_signed
from kymamesh.steps.tls import SOURCE_ANNOTATION, TlsParams, secret_object
from tests.support_certs import assert_no_key, make_pair, write_pair
from tests.support_patch import CHARTS, ensure_istio, get_json, kymamesh, kymamesh_json

SECRET = ("secret", "kyma-gateway-certs", "-n", "istio-system")
GATEWAY = ("gateways.networking.istio.io", "kyma-gateway", "-n", "kyma-system")


@pytest.fixture
def istio(cluster: Any) -> Any:
    ensure_istio(cluster)
    return cluster


def live_pair(cluster: Any) -> tuple[x509.Certificate, bytes, dict[str, Any]]:
    secret = get_json(cluster, *SECRET)
    assert secret is not None, "the Secret is missing"
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    return cert, base64.b64decode(secret["data"]["tls.key"]), secret


def dns_names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def step_item(result: dict[str, Any], name: str = "ingress-gateway-tls") -> dict[str, Any]:
    for phase in result["phases"]:
        for item in phase["items"]:
            if item["name"] == name:
                return dict(item)
    raise AssertionError(f"no item {name} in {json.dumps(result, indent=1)}")


def put_secret(cluster: Any, obj: dict[str, Any]) -> None:
    cluster.kubectl("delete", *SECRET, "--ignore-not-found")
    cluster.kubectl("create", "-f", "-", input=json.dumps(obj))


def test_secret_and_gateway_created_then_a_rerun_writes_nothing(istio: Any) -> None:
    domain = "tls-one.example.com"
    istio.kubectl("delete", *SECRET, "--ignore-not-found")
    istio.kubectl("delete", *GATEWAY, "--ignore-not-found")

    code, result, stderr = kymamesh_json(istio, "patch", "-y", "--domain", domain)
    assert code == 0, (result, stderr)
    item = step_item(result)
    assert item["outcome"] == "changed"
    assert f"new self-signed certificate for *.{domain}, valid until" in item["summary"]

    cert, key, secret = live_pair(istio)
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kymamesh"
    assert secret["metadata"]["annotations"][SOURCE_ANNOTATION] == "self-signed"
    assert dns_names(cert) == {f"*.{domain}", domain}
    assert cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=360)
    assert_no_key(json.dumps(result) + stderr, key)

    gateway = get_json(istio, *GATEWAY)
    assert gateway is not None
    assert gateway["apiVersion"] == "networking.istio.io/v1"
    assert gateway["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kymamesh"
    spec = gateway["spec"]
    assert spec["selector"] == {"istio": "ingressgateway"}
    https, http = spec["servers"]
    assert https["port"] == {"number": 443, "name": "https", "protocol": "HTTPS"}
    assert https["hosts"] == [f"*.{domain}"]
    assert https["tls"] == {"mode": "SIMPLE", "credentialName": "kyma-gateway-certs"}
    assert http["port"]["number"] == 80 and http["tls"] == {"httpsRedirect": True}

    with istio.audit.counting() as writes:
        code, again, _ = kymamesh_json(istio, "patch", "-y", "--domain", domain)
    assert code == 0
    assert step_item(again)["outcome"] == "unchanged"
    assert writes.total == 0, writes.describe()
    assert live_pair(istio)[1] == key


def test_certificate_near_expiry_is_renewed(istio: Any) -> None:
    domain = "tls-renew.example.com"
    old = self_signed(domain, 10)
    put_secret(istio, secret_object(TlsParams.of({"domain": domain}), old, "self-signed"))

    code, result, stderr = kymamesh_json(istio, "patch", "-y", "--domain", domain)
    assert code == 0, (result, stderr)
    item = step_item(result)
    assert "renewing: the live one expires on" in item["summary"]
    cert, key, _ = live_pair(istio)
    assert key != old.key_pem
    assert cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=360)
    assert_no_key(json.dumps(result) + stderr, old.key_pem)
    assert_no_key(json.dumps(result) + stderr, key)


def test_user_pair_is_installed_and_kept(istio: Any, tmp_path: Path) -> None:
    domain = "tls-user.example.com"
    cert_pem, key_pem = make_pair([f"*.{domain}"], issuer_cn="Example Issuing CA")
    cert_file, key_file = write_pair(tmp_path, cert_pem, key_pem)
    flags = ["--domain", domain, "--tls-cert", str(cert_file), "--tls-key", str(key_file)]

    dry = kymamesh(istio, "patch", "-y", "--dry-run", "-v", *flags)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "(redacted)" in dry.stdout and "issuer: CN=Example Issuing CA" in dry.stdout
    assert "tls.key: (redacted, " in dry.stdout  # new or changed, never the key
    assert_no_key(dry.stdout + dry.stderr, key_pem)

    done = kymamesh(istio, "patch", "-y", "-v", *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"the given certificate for *.{domain} installed" in done.stdout
    assert_no_key(done.stdout + done.stderr, key_pem)
    _, key, secret = live_pair(istio)
    assert key == key_pem
    assert base64.b64decode(secret["data"]["tls.crt"]) == cert_pem
    assert secret["metadata"]["annotations"][SOURCE_ANNOTATION] == "user"

    with istio.audit.counting() as writes:
        code, result, _ = kymamesh_json(istio, "patch", "-y", *flags)
        assert code == 0
        # without the flags the user's certificate stays too
        code, plain, _ = kymamesh_json(istio, "patch", "-y", "--domain", domain)
        assert code == 0
    assert writes.total == 0, writes.describe()
    assert step_item(result)["outcome"] == "unchanged"
    assert step_item(plain)["outcome"] == "unchanged"
    assert_no_key(json.dumps(result), key_pem)


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("mismatch", "does not belong to"),
        ("expired", "expired on"),
        ("domain", "does not cover *.tls-bad.example.com"),
    ],
)
def test_bad_pair_is_refused_with_zero_writes(
    istio: Any, tmp_path: Path, problem: str, message: str
) -> None:
    domain = "tls-bad.example.com"
    now = datetime.now(UTC)
    if problem == "mismatch":
        cert_pem, _ = make_pair([f"*.{domain}"])
        _, key_pem = make_pair([f"*.{domain}"])
    elif problem == "expired":
        cert_pem, key_pem = make_pair(
            [f"*.{domain}"], not_before=now - timedelta(days=90), not_after=now - timedelta(days=2)
        )
    else:
        cert_pem, key_pem = make_pair(["*.elsewhere.example.org"])
    cert_file, key_file = write_pair(tmp_path, cert_pem, key_pem)
    flags = ["--domain", domain, "--tls-cert", str(cert_file), "--tls-key", str(key_file)]
    before = live_pair(istio)[1]

    with istio.audit.counting() as writes:
        code, result, stderr = kymamesh_json(istio, "patch", "-y", *flags)
        install = kymamesh(istio, "install", "--charts-dir", str(CHARTS), "-y", *flags)
    assert writes.total == 0, writes.describe()
    assert code == 3, (result, stderr)
    assert result["status"] == "refused"
    assert result["errors"][0]["code"] == "invalid-certificate"
    assert message in result["errors"][0]["message"]
    assert install.returncode == 3, install.stdout + install.stderr
    assert message in install.stderr
    assert_no_key(json.dumps(result) + stderr + install.stdout + install.stderr, key_pem)
    assert live_pair(istio)[1] == before
