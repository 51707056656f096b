"""Version numbers: parsing Istio image tags and chart versions, and the upgrade gate."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kymamesh.errors import PreconditionError, VersionGateError

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+].*)?$")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.match(text.strip())
        if not match:
            raise PreconditionError(f"'{text}' is not a version number (expected e.g. 1.30.3)")
        major, minor, patch = match.groups()
        return cls(int(major), int(minor), int(patch or 0))

    @property
    def minor_line(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


_TAG_SUFFIXES = ("-distroless", "-debug")


def image_version(image: str) -> Version:
    """The Istio version in a container image reference.

    Handles a registry with a port (`registry:5000/istio/pilot:1.30.3`), a digest
    (`...pilot:1.30.3@sha256:...`) and the `-distroless` variant.
    """
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        raise PreconditionError(
            f"the image '{image}' has no tag, so its Istio version is unknown",
            hint="run an istiod image tagged with its version (e.g. pilot:1.30.3)",
        )
    tag = last.rsplit(":", 1)[1]
    for suffix in _TAG_SUFFIXES:
        tag = tag.removesuffix(suffix)
    try:
        return Version.parse(tag)
    except PreconditionError:
        raise PreconditionError(
            f"the image tag '{tag}' of '{image}' is not an Istio version",
            hint="run an istiod image tagged with its version (e.g. pilot:1.30.3)",
        ) from None


def check_upgrade(what: str, deployed: Version, target: Version) -> None:
    """Refuse a downgrade and a jump of more than one minor version."""
    if target < deployed:
        raise VersionGateError(
            f"{what} is at {deployed}; installing {target} would be a downgrade",
            hint="kymamesh does not downgrade Istio; use a kymamesh release that supports "
            f"{deployed}, or uninstall first",
        )
    if target.major != deployed.major or target.minor - deployed.minor > 1:
        raise VersionGateError(
            f"{what} is at {deployed}; {target} is more than one minor version ahead",
            hint=f"upgrade one minor version at a time: first to {deployed.major}."
            f"{deployed.minor + 1}.x with the kymamesh release that supports it",
        )


def check_supported_for_adoption(found: Version, supported: Version) -> None:
    """An existing istiod must be the supported minor or one below."""
    if found.major == supported.major and supported.minor - 1 <= found.minor <= supported.minor:
        return
    raise PreconditionError(
        f"istiod runs Istio {found}; kymamesh supports adopting "
        f"{supported.major}.{supported.minor - 1}.x and {supported.major}.{supported.minor}.x",
        hint=f"upgrade the existing Istio to {supported.major}.{supported.minor}.x first",
    )
