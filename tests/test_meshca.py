"""The mesh's root CA and a cluster's plug-in CA: made, read from a folder, checked (chain,
expiry, key match). Pure logic; tests/test_multicluster_cluster.py runs them against istiod."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kymamesh.errors import UsageError
from kymamesh.identity import certs, meshca
from kymamesh.identity.certs import InvalidCertificateError


def now() -> datetime:
    """The time of the check: read when it is made (a time read at import is minutes old
    by the time a test runs on a busy machine, older than a CA made during the test)."""
    return datetime.now(UTC)


def _root(tmp_path: Path, name: str = "root") -> Path:
    out = tmp_path / name
    meshca.create_root(out, name, 3650)
    return out


def _write_intermediate(folder: Path, ca: certs.ClusterCa) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in ca.values().items():
        (folder / key).write_bytes(value)


def test_a_root_from_ca_create_issues_intermediates(tmp_path: Path) -> None:
    out = _root(tmp_path)
    root = meshca.read_dir(out, now())
    assert isinstance(root, certs.RootCa)
    assert "root-key" not in repr(root) and "PRIVATE" not in repr(root)
    ca = certs.make_cluster_ca(root, "east")
    assert certs.check_cluster_ca(ca, "x", now()) is ca
    assert "PRIVATE" not in repr(ca) and "PRIVATE" not in ca.describe()
    assert certs.same_root(ca.root_cert_pem, root.cert_pem)


def test_ca_create_never_overwrites(tmp_path: Path) -> None:
    out = _root(tmp_path)
    with pytest.raises(UsageError, match="never overwritten"):
        meshca.create_root(out, "again", 3650)


def test_a_users_own_intermediate_is_taken_as_it_is(tmp_path: Path) -> None:
    root = meshca.read_dir(_root(tmp_path), now())
    assert isinstance(root, certs.RootCa)
    ca = certs.make_cluster_ca(root, "east")
    _write_intermediate(tmp_path / "mine", ca)
    read = meshca.read_dir(tmp_path / "mine", now())
    assert isinstance(read, certs.ClusterCa) and read.values() == ca.values()


def test_an_intermediate_of_another_root_is_refused(tmp_path: Path) -> None:
    root = meshca.read_dir(_root(tmp_path, "a"), now())
    other = meshca.read_dir(_root(tmp_path, "b"), now())
    assert isinstance(root, certs.RootCa) and isinstance(other, certs.RootCa)
    ca = certs.make_cluster_ca(root, "east")
    mixed = certs.ClusterCa(ca.ca_cert_pem, ca.ca_key_pem, ca.ca_cert_pem, other.cert_pem)
    with pytest.raises(InvalidCertificateError, match="is not issued by CN=b root CA"):
        certs.check_cluster_ca(mixed, "dir", now())


def test_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    root = meshca.read_dir(_root(tmp_path), now())
    assert isinstance(root, certs.RootCa)
    a, b = certs.make_cluster_ca(root, "a"), certs.make_cluster_ca(root, "b")
    wrong = certs.ClusterCa(a.ca_cert_pem, b.ca_key_pem, a.cert_chain_pem, a.root_cert_pem)
    with pytest.raises(InvalidCertificateError, match=r"ca-key\.pem does not belong"):
        certs.check_cluster_ca(wrong, "dir", now())


def test_expired_and_not_yet_valid_are_refused(tmp_path: Path) -> None:
    cert, key = certs.make_root_ca("old", 2, now=now() - timedelta(days=10))
    with pytest.raises(InvalidCertificateError, match="expired on"):
        certs.check_root(cert, key, "dir", now())
    root = certs.check_root(*certs.make_root_ca("r"), "dir", now())
    ca = certs.make_cluster_ca(root, "east", now=now() + timedelta(days=3))
    with pytest.raises(InvalidCertificateError, match="is not valid before"):
        certs.check_cluster_ca(ca, "dir", now())


def test_a_leaf_is_not_a_ca(tmp_path: Path) -> None:
    leaf = certs.self_signed("example.com", 30)
    with pytest.raises(InvalidCertificateError, match="is not a CA certificate"):
        certs.check_root(leaf.cert_pem, leaf.key_pem, "dir", now())


def test_folders_that_hold_no_ca_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a folder"):
        meshca.read_dir(tmp_path / "missing", now())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds neither a root CA"):
        meshca.read_dir(tmp_path / "empty", now())
    half = tmp_path / "half"
    half.mkdir()
    (half / "ca-cert.pem").write_text("x")
    with pytest.raises(UsageError, match=r"not ca-key\.pem, root-cert\.pem, cert-chain\.pem"):
        meshca.read_dir(half, now())
