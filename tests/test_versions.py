"""Version parsing (image tags with registry ports, digests, -distroless) and the upgrade gate."""

from __future__ import annotations

import itertools

import pytest

from kymamesh.errors import PreconditionError, VersionGateError
from kymamesh.istio.versions import (
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
    check_upgrade("r", Version(1, 30, 3), Version(1, 30, 5))  # a patch: routine
    with pytest.raises(VersionGateError, match="downgrade"):
        check_upgrade("r", Version(1, 30, 3), Version(1, 29, 4))
    with pytest.raises(VersionGateError, match="downgrade"):
        check_upgrade("r", Version(1, 30, 5), Version(1, 30, 3))
    with pytest.raises(VersionGateError, match=r"2 minor versions ahead.*in-place") as err:
        check_upgrade("r", Version(1, 29, 4), Version(1, 31, 1))
    assert "--revision-based" in (err.value.hint or "")


def test_upgrade_gate_by_revisions_spans_two_minors() -> None:
    check_upgrade("r", Version(1, 29, 4), Version(1, 31, 1), revision_based=True)
    check_upgrade("r", Version(1, 30, 3), Version(1, 31, 1), revision_based=True)
    with pytest.raises(VersionGateError, match=r"3 minor versions ahead.*revision-based"):
        check_upgrade("r", Version(1, 28, 0), Version(1, 31, 1), revision_based=True)
    with pytest.raises(VersionGateError, match="downgrade"):
        check_upgrade("r", Version(1, 31, 1), Version(1, 30, 5), revision_based=True)


def test_adoption_accepts_supported_minors_and_one_below() -> None:
    oldest, newest = Version(1, 30, 5), Version(1, 31, 1)
    for found in (Version(1, 31, 0), Version(1, 30, 0), Version(1, 29, 9)):
        check_supported_for_adoption(found, oldest, newest)
    for found in (Version(1, 28, 5), Version(1, 32, 0), Version(2, 30, 0)):
        with pytest.raises(PreconditionError):
            check_supported_for_adoption(found, oldest, newest)


# -- pre-releases and build metadata (SemVer 2.0 order) ---------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.31.0-rc.0", Version(1, 31, 0, ("rc", 0))),
        ("1.30.0-beta.1", Version(1, 30, 0, ("beta", 1))),
        ("v1.30.0-alpha", Version(1, 30, 0, ("alpha",))),
        ("1.31-alpha.0a1b2c", Version(1, 31, 0, ("alpha", "0a1b2c"))),
        ("1.30.0-rc.01", Version(1, 30, 0, ("rc", "01"))),  # a leading zero: a word, not 1
        ("v1.30.2+k3s1", Version(1, 30, 2)),
        ("1.31.0-rc.1+build.7", Version(1, 31, 0, ("rc", 1))),
    ],
)
def test_prerelease_parses(text: str, expected: Version) -> None:
    assert Version.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "shown"),
    [("1.31.0-rc.0", "1.31.0-rc.0"), ("v1.30.2+k3s1", "1.30.2+k3s1"), ("1.30", "1.30.0")],
)
def test_version_shown_as_parsed(text: str, shown: str) -> None:
    assert str(Version.parse(text)) == shown


@pytest.mark.parametrize("bad", ["1.31.0-", "1.31.0-rc..0", "1.31.0+", "1.31.0-rc_0", "1", ""])
def test_malformed_version_is_a_clear_error(bad: str) -> None:
    with pytest.raises(PreconditionError, match="is not a version number"):
        Version.parse(bad)


def test_semver_order() -> None:
    # the example order of semver.org, section 11, then Istio's own sequence
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.30.0-beta.1",
        "1.30.0-rc.0",
        "1.30.0",
        "1.30.3",
        "1.31.0-rc.0",
        "1.31.0",
    ]
    versions = [Version.parse(t) for t in ordered]
    assert sorted(reversed(versions)) == versions
    for low, high in itertools.pairwise(versions):
        assert low < high and high > low and low != high and low <= high


def test_build_metadata_is_not_compared() -> None:
    assert Version.parse("1.30.2+k3s1") == Version.parse("1.30.2+gke.7")
    assert hash(Version.parse("1.30.2+k3s1")) == hash(Version(1, 30, 2))
    assert not Version.parse("1.30.2+k3s1") < Version.parse("1.30.2")


def test_release_candidate_is_not_the_release() -> None:
    assert Version.parse("1.31.0-rc.0") != Version(1, 31, 0)
    assert Version.parse("1.31.0-rc.0") < Version(1, 31, 0)
    assert Version.parse("1.31.0-rc.0") > Version(1, 30, 9)


def test_prerelease_images() -> None:
    assert image_version("istio/pilot:1.31.0-rc.0") == Version(1, 31, 0, ("rc", 0))
    assert image_version("istio/pilot:1.31.0-rc.0-distroless") == Version(1, 31, 0, ("rc", 0))
    assert image_version("istio/proxyv2:1.30.3-distroless-debug") == Version(1, 30, 3)


def test_upgrade_gate_with_prereleases() -> None:
    check_upgrade("r", Version.parse("1.30.3"), Version.parse("1.31.0-rc.0"))
    check_upgrade("r", Version.parse("1.31.0-rc.0"), Version.parse("1.31.0"))
    check_upgrade("r", Version.parse("1.31.0-beta.1"), Version.parse("1.31.0-rc.0"))
    with pytest.raises(VersionGateError, match="downgrade"):
        check_upgrade("r", Version.parse("1.31.0"), Version.parse("1.31.0-rc.0"))
    with pytest.raises(VersionGateError, match="downgrade"):
        check_upgrade("r", Version.parse("1.31.0-rc.1"), Version.parse("1.31.0-rc.0"))
    with pytest.raises(VersionGateError, match=r"1\.29\.4; 1\.31\.0-rc\.0 is 2 minor"):
        check_upgrade("r", Version.parse("1.29.4"), Version.parse("1.31.0-rc.0"))


def test_adoption_of_a_prerelease_istiod() -> None:
    oldest, newest = Version(1, 30, 5), Version(1, 31, 1)
    check_supported_for_adoption(Version.parse("1.31.0-rc.0"), oldest, newest)
    with pytest.raises(PreconditionError, match=r"1\.32\.0-rc\.0"):
        check_supported_for_adoption(Version.parse("1.32.0-rc.0"), oldest, newest)
