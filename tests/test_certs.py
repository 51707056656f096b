"""TLS material: checking a user's pair, the self-signed certificate, and the step's
decisions and redaction (with an in-memory cluster; tests/test_tls_cluster.py does it for real)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kymamesh.adapters.cluster import Ref
from kymamesh.errors import ExitCode, PartialFailureError, UsageError
from kymamesh.identity.certs import (
    InvalidCertificateError,
    check_domain,
    check_usable,
    load_pair,
    parse_pair,
    self_signed,
)
from kymamesh.steps.tls import SOURCE_ANNOTATION, TlsParams, secret_object
from kymamesh.workflows import patching
from tests.support_certs import assert_no_key, make_pair, write_pair
from tests.support_fake_cluster import FakeCluster, run_context

NOW = datetime.now(UTC)
DOMAIN = "example.com"


# -- checking a user's pair ---------------------------------------------------------


def test_valid_pair_is_accepted_without_warnings(tmp_path: Path) -> None:
    pair = load_pair(*write_pair(tmp_path, *make_pair([f"*.{DOMAIN}", DOMAIN])))
    assert check_usable(pair, DOMAIN, NOW, 30) == []
    assert pair.info.covers(DOMAIN)
    assert pair.info.subject == f"CN=*.{DOMAIN}"


def test_mismatched_pair_is_refused(tmp_path: Path) -> None:
    cert, _ = make_pair([f"*.{DOMAIN}"])
    _, other_key = make_pair([f"*.{DOMAIN}"])
    with pytest.raises(InvalidCertificateError, match="does not belong to") as caught:
        load_pair(*write_pair(tmp_path, cert, other_key))
    assert caught.value.exit_code == ExitCode.PRECONDITION
    assert caught.value.code == "invalid-certificate"


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = make_pair(
        [f"*.{DOMAIN}"], not_before=NOW - timedelta(days=100), not_after=NOW - timedelta(days=1)
    )
    pair = load_pair(*write_pair(tmp_path, cert, key))
    with pytest.raises(InvalidCertificateError, match="expired on"):
        check_usable(pair, DOMAIN, NOW, 30)


def test_not_yet_valid_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = make_pair([f"*.{DOMAIN}"], not_before=NOW + timedelta(days=2))
    pair = load_pair(*write_pair(tmp_path, cert, key))
    with pytest.raises(InvalidCertificateError, match="not valid before"):
        check_usable(pair, DOMAIN, NOW, 30)


@pytest.mark.parametrize(
    "names",
    [
        ["*.other.org"],
        [DOMAIN],  # the bare domain does not cover its subdomains
        [f"*.sub.{DOMAIN}"],
        [f"www.{DOMAIN}"],
        [],  # no subjectAltName at all
    ],
)
def test_certificate_for_another_domain_is_refused(tmp_path: Path, names: list[str]) -> None:
    pair = load_pair(*write_pair(tmp_path, *make_pair(names)))
    with pytest.raises(InvalidCertificateError, match=rf"does not cover \*\.{DOMAIN}"):
        check_usable(pair, DOMAIN, NOW, 30)


def test_expiring_soon_is_accepted_with_a_warning(tmp_path: Path) -> None:
    cert, key = make_pair([f"*.{DOMAIN}"], not_after=NOW + timedelta(days=10))
    pair = load_pair(*write_pair(tmp_path, cert, key))
    warnings = check_usable(pair, DOMAIN, NOW, 30)
    assert len(warnings) == 1
    assert "expires on" in warnings[0] and "renew it" in warnings[0]


def test_intermediates_after_the_leaf_are_kept(tmp_path: Path) -> None:
    leaf, key = make_pair([f"*.{DOMAIN}"], issuer_cn="Some CA")
    intermediate, _ = make_pair(["Some CA"])
    pair = load_pair(*write_pair(tmp_path, leaf + intermediate, key))
    assert pair.info.chain_length == 2
    assert not pair.info.self_issued


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    cert, key = make_pair([f"*.{DOMAIN}"])
    _, key_file = write_pair(tmp_path, cert, key)
    with pytest.raises(InvalidCertificateError, match="cannot read the certificate file"):
        load_pair(tmp_path / "missing.crt", key_file)
    with pytest.raises(InvalidCertificateError, match="is not a PEM certificate"):
        load_pair(*write_pair(tmp_path, b"hello", key))
    with pytest.raises(InvalidCertificateError, match="is not a PEM private key"):
        load_pair(*write_pair(tmp_path, cert, b"-----BEGIN PRIVATE KEY-----\nAAAA\n"))
    with pytest.raises(InvalidCertificateError, match="contains a private key"):
        load_pair(*write_pair(tmp_path, cert + key, key))


def test_encrypted_key_is_refused(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    cert, _ = make_pair([f"*.{DOMAIN}"], key=private)
    encrypted = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(InvalidCertificateError, match="encrypted with a passphrase"):
        load_pair(*write_pair(tmp_path, cert, encrypted))


def test_small_rsa_key_is_refused(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidCertificateError, match="RSA key of 1024 bits"):
        load_pair(*write_pair(tmp_path, *make_pair([f"*.{DOMAIN}"], key=private)))


def test_error_messages_never_contain_the_key(tmp_path: Path) -> None:
    cert, _ = make_pair([f"*.{DOMAIN}"])
    _, key = make_pair([f"*.{DOMAIN}"])
    with pytest.raises(InvalidCertificateError) as caught:
        parse_pair(cert, key)
    text = f"{caught.value.message} {caught.value.hint}"
    assert "PRIVATE KEY" not in text
    assert key.decode().splitlines()[1] not in text


def test_domain_is_checked() -> None:
    assert check_domain("Example.COM.") == "example.com"
    for bad in ("*.example.com", "localhost", "exa mple.com", ""):
        with pytest.raises(UsageError):
            check_domain(bad)


# -- the self-signed certificate ----------------------------------------------------------


def test_self_signed_covers_wildcard_and_domain() -> None:
    pair = self_signed(DOMAIN, 365, NOW)
    info = pair.info
    assert set(info.dns_names) == {f"*.{DOMAIN}", DOMAIN}
    assert info.self_issued
    assert timedelta(days=364) < info.not_after - NOW <= timedelta(days=365)
    assert check_usable(pair, DOMAIN, NOW, 30) == []
    assert parse_pair(pair.cert_pem, pair.key_pem).same_as(pair)  # key matches the cert
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert "PRIVATE" not in repr(pair) and pair.key_pem.decode() not in repr(pair)


# -- the step with an in-memory cluster ---------------------------------------------------


def tls_specs(**params: object) -> list[patching.StepSpec]:
    return [
        s
        for s in patching.load_patch_list({"ingress-gateway-tls": dict(params)})
        if s.name == "ingress-gateway-tls"
    ]


def live_key(cluster: FakeCluster) -> bytes:
    secret = cluster.get(Ref("v1", "Secret", "kyma-gateway-certs", "istio-system"))
    assert secret is not None
    return base64.b64decode(secret["data"]["tls.key"])


def test_step_creates_self_signed_then_leaves_it_alone() -> None:
    cluster = FakeCluster()
    ctx = run_context(cluster)
    specs = tls_specs(domain=DOMAIN)
    patching.run_patch(ctx, patching.PatchInputs(), specs)
    item = ctx.result.phases[0].items[0]
    assert item.outcome == "changed", item
    assert f"new self-signed certificate for *.{DOMAIN}, valid until" in item.summary
    assert "Gateway created" in item.summary
    gateway = cluster.get(Ref("networking.istio.io/v1", "Gateway", "kyma-gateway", "kyma-system"))
    assert gateway is not None
    https = gateway["spec"]["servers"][0]
    assert https["tls"] == {"mode": "SIMPLE", "credentialName": "kyma-gateway-certs"}
    assert https["hosts"] == [f"*.{DOMAIN}"]
    assert gateway["spec"]["selector"] == {"istio": "ingressgateway"}
    secret = cluster.get(Ref("v1", "Secret", "kyma-gateway-certs", "istio-system"))
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kymamesh"
    assert_no_key(
        ctx.result.render_json() + ctx.result.render_text(verbose=True), live_key(cluster)
    )
    # the Lease lives in istio-system, so that namespace comes first; all else under the lock
    assert cluster.unlocked_writes == ["create Namespace/istio-system"]

    writes = len(cluster.writes)
    again = run_context(cluster)
    patching.run_patch(again, patching.PatchInputs(), specs)
    assert again.result.phases[0].items[0].outcome == "unchanged"
    assert len(cluster.writes) == writes


def test_step_renews_its_own_certificate_near_expiry() -> None:
    cluster = FakeCluster()
    params = TlsParams.of({"domain": DOMAIN})
    old = self_signed(DOMAIN, 10)
    cluster.add(secret_object(params, old, "self-signed"))
    ctx = run_context(cluster)
    patching.run_patch(ctx, patching.PatchInputs(), tls_specs(domain=DOMAIN))
    item = ctx.result.phases[0].items[0]
    assert "renewing: the live one expires on" in item.summary
    assert live_key(cluster) != old.key_pem
    assert_no_key(ctx.result.render_json(), old.key_pem)


def test_step_keeps_a_foreign_certificate_near_expiry_and_says_so(tmp_path: Path) -> None:
    cluster = FakeCluster()
    params = TlsParams.of({"domain": DOMAIN})
    cert, key = make_pair([f"*.{DOMAIN}"], not_after=NOW + timedelta(days=5), issuer_cn="A CA")
    cluster.add(secret_object(params, parse_pair(cert, key), "user"))
    ctx = run_context(cluster)
    patching.run_patch(ctx, patching.PatchInputs(), tls_specs(domain=DOMAIN))
    assert live_key(cluster) == key
    assert any("kymamesh did not make it" in n for n in ctx.result.notes)
    assert len([n for n in ctx.result.notes if "did not make it" in n]) == 1


def test_step_replaces_a_certificate_for_another_domain() -> None:
    cluster = FakeCluster()
    params = TlsParams.of({"domain": "old.example"})
    cluster.add(secret_object(params, self_signed("old.example", 365), "self-signed"))
    ctx = run_context(cluster)
    patching.run_patch(ctx, patching.PatchInputs(), tls_specs(domain=DOMAIN))
    item = ctx.result.phases[0].items[0]
    assert "covers *.old.example, old.example, not *.example.com" in item.summary


def test_user_pair_installed_and_dry_run_diff_is_redacted(tmp_path: Path) -> None:
    cluster = FakeCluster()
    patching.run_patch(run_context(cluster), patching.PatchInputs(), tls_specs(domain=DOMAIN))
    old_key = live_key(cluster)
    cert, key = make_pair([f"*.{DOMAIN}"], issuer_cn="Real CA")
    cert_file, key_file = write_pair(tmp_path, cert, key)
    specs = tls_specs(domain=DOMAIN, certFile=str(cert_file), keyFile=str(key_file))

    dry = run_context(cluster, dry_run=True)
    patching.run_patch(dry, patching.PatchInputs(), specs)
    item = dry.result.phases[0].items[0]
    assert item.outcome == "would-change"
    assert "(redacted)" in item.diff and "issuer: CN=Real CA" in item.diff
    assert "+  tls.key: (redacted, changed)" in item.diff  # a new key, never its value
    rendered = dry.result.render_json() + dry.result.render_text(verbose=True)
    assert_no_key(rendered, key)
    assert_no_key(rendered, old_key)

    ctx = run_context(cluster)
    patching.run_patch(ctx, patching.PatchInputs(), specs)
    assert live_key(cluster) == key
    secret = cluster.get(Ref("v1", "Secret", "kyma-gateway-certs", "istio-system"))
    assert secret is not None and secret["metadata"]["annotations"][SOURCE_ANNOTATION] == "user"
    assert_no_key(ctx.result.render_json() + ctx.result.render_text(verbose=True), key)

    writes = len(cluster.writes)
    patching.run_patch(run_context(cluster), patching.PatchInputs(), specs)
    assert len(cluster.writes) == writes
    # and without the flags the user's certificate stays
    patching.run_patch(run_context(cluster), patching.PatchInputs(), tls_specs(domain=DOMAIN))
    assert live_key(cluster) == key and len(cluster.writes) == writes


def test_bad_pair_is_refused_in_preflight(tmp_path: Path) -> None:
    cluster = FakeCluster()
    cert, key = make_pair(["*.other.org"])
    cert_file, key_file = write_pair(tmp_path, cert, key)
    ctx = run_context(cluster)
    specs = tls_specs(domain=DOMAIN, certFile=str(cert_file), keyFile=str(key_file))
    with pytest.raises(InvalidCertificateError, match="does not cover"):
        patching.preflight(ctx, patching.PatchInputs(), specs)
    assert cluster.writes == []


def test_params_are_checked() -> None:
    with pytest.raises(UsageError, match="validityDays"):
        TlsParams.of({"domain": DOMAIN, "validityDays": 20, "renewBeforeDays": 30})
    with pytest.raises(UsageError, match="go together"):
        TlsParams.of({"domain": DOMAIN, "certFile": "a.crt"})


def test_gateway_falls_back_to_v1beta1() -> None:
    cluster = FakeCluster(served={("networking.istio.io/v1beta1", "Gateway")})
    patching.run_patch(run_context(cluster), patching.PatchInputs(), tls_specs(domain=DOMAIN))
    ref = Ref("networking.istio.io/v1beta1", "Gateway", "kyma-gateway", "kyma-system")
    assert cluster.get(ref) is not None


def test_gateway_kind_not_served_yet() -> None:
    cluster = FakeCluster(served=set())
    dry = run_context(cluster, dry_run=True)
    patching.run_patch(
        dry, patching.PatchInputs(), tls_specs(domain=DOMAIN)
    )  # install --dry-run on a bare cluster
    item = dry.result.phases[0].items[0]
    assert item.outcome == "would-change"
    assert "(after Istio's CRDs exist)" in item.summary
    ctx = run_context(cluster)
    with pytest.raises(PartialFailureError):
        patching.run_patch(ctx, patching.PatchInputs(), tls_specs(domain=DOMAIN))
    assert "does not serve Istio's Gateway kind" in ctx.result.phases[0].items[0].error
