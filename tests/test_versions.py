"""Version parsing (image tags with registry ports, digests, -distroless) and the upgrade gate."""

from __future__ import annotations

import pytest

from kymamesh.errors import PreconditionError, VersionGateError
from kymamesh.versions import (
    Version,
    check_supported_for_adoption,
    check_upgrade,
    image_version,
)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("docker.io/istio/pilot:1.30.3", Version(1, 30, 3)),
        ("registry.local:5000/istio/pilot:1.29.4", Version(1, 29, 4)),
        ("gcr.io/istio-release/pilot:1.30.3-distroless", Version(1, 30, 3)),
        ("my.registry:443/mirror/pilot:1.30.1@sha256:" + "a" * 64, Version(1, 30, 1)),
        ("pilot:1.30.0-distroless@sha256:" + "b" * 64, Version(1, 30, 0)),
    ],
)
def test_image_version(image: str, expected: Version) -> None:
    assert image_version(image) == expected


@pytest.mark.parametrize(
    "image", ["registry:5000/istio/pilot", "pilot@sha256:" + "c" * 64, "pilot:latest"]
)
def test_image_without_a_version_is_a_clear_error(image: str) -> None:
    with pytest.raises(PreconditionError, match="pilot"):
        image_version(image)


def test_upgrade_gate() -> None:
    check_upgrade("r", Version(1, 29, 4), Version(1, 30, 3))
    check_upgrade("r", Version(1, 30, 3), Version(1, 30, 3))
    with pytest.raises(VersionGateError, match="downgrade"):
        check_upgrade("r", Version(1, 30, 3), Version(1, 29, 4))
    with pytest.raises(VersionGateError, match="more than one minor"):
        check_upgrade("r", Version(1, 28, 0), Version(1, 30, 3))


def test_adoption_accepts_supported_minor_and_one_below() -> None:
    supported = Version(1, 30, 3)
    check_supported_for_adoption(Version(1, 30, 0), supported)
    check_supported_for_adoption(Version(1, 29, 9), supported)
    for found in (Version(1, 28, 5), Version(1, 31, 0), Version(2, 30, 0)):
        with pytest.raises(PreconditionError):
            check_supported_for_adoption(found, supported)
