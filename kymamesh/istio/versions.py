"""Version numbers: parsing Istio image tags and chart versions, and the upgrade gate."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import total_ordering

from kymamesh.errors import PreconditionError, VersionGateError

_IDENTIFIERS = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_VERSION = re.compile(
    rf"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:-(?P<pre>{_IDENTIFIERS}))?(?:\+(?P<build>{_IDENTIFIERS}))?$"
)

PreRelease = tuple[int | str, ...]


def _identifier(part: str) -> int | str:
    """A number when it is one as SemVer counts them (no leading zero), else a word."""
    return int(part) if part.isdigit() and (part == "0" or part[0] != "0") else part


@total_ordering
@dataclass(frozen=True)
class Version:
    """A version number, ordered as Semantic Versioning 2.0 orders them.

    A pre-release (`1.31.0-rc.0`, `1.30.0-beta.1`) comes before its release, and
    pre-releases compare identifier by identifier: numbers by value, below words,
    words by their ASCII order, and a shorter list first when it is a prefix
    (`alpha` < `alpha.1` < `beta` < `beta.2` < `beta.11` < `rc.0` < release).
    Build metadata (`+k3s1`) is kept for display but never compared.
    """

    major: int
    minor: int
    patch: int = 0
    pre: PreRelease = ()
    build: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.match(text.strip())
        if not match:
            raise PreconditionError(
                f"'{text}' is not a version number (expected e.g. 1.30.3 or 1.31.0-rc.0)"
            )
        major, minor, patch = match.group(1, 2, 3)
        pre = tuple(_identifier(part) for part in (match["pre"] or "").split(".") if part)
        return cls(int(major), int(minor), int(patch or 0), pre, match["build"] or "")

    @property
    def minor_line(self) -> tuple[int, int]:
        return (self.major, self.minor)

    @property
    def is_prerelease(self) -> bool:
        return bool(self.pre)

    def _order(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        identifiers = tuple(
            (0, part, "") if isinstance(part, int) else (1, 0, part) for part in self.pre
        )
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, identifiers)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._order() < other._order()

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += "-" + ".".join(map(str, self.pre))
        if self.build:
            text += "+" + self.build
        return text


_TAG_SUFFIXES = ("-distroless", "-debug")


def image_version(image: str) -> Version:
    """The Istio version in a container image reference.

    Handles a registry with a port (`registry:5000/istio/pilot:1.30.3`), a digest
    (`...pilot:1.30.3@sha256:...`), the `-distroless` and `-debug` variants, and
    pre-releases (`pilot:1.31.0-rc.0`).
    """
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        raise PreconditionError(
            f"the image '{image}' has no tag, so its Istio version is unknown",
            hint="run an istiod image tagged with its version (e.g. pilot:1.30.3)",
        )
    tag = last.rsplit(":", 1)[1]
    stripped = None
    while stripped != tag:  # image variants, not versions: 1.30.3-distroless-debug is 1.30.3
        stripped = tag
        for suffix in _TAG_SUFFIXES:
            tag = tag.removesuffix(suffix)
    try:
        return Version.parse(tag)
    except PreconditionError:
        raise PreconditionError(
            f"the image tag '{tag}' of '{image}' is not an Istio version",
            hint="run an istiod image tagged with its version (e.g. pilot:1.30.3)",
        ) from None


def check_upgrade(
    what: str, deployed: Version, target: Version, *, revision_based: bool = False
) -> None:
    """Istio's upgrade rules: no downgrade; a patch within a minor is routine; in place
    one minor at a time; by revisions (a canary beside the old control plane) up to two."""
    if target < deployed:
        raise VersionGateError(
            f"{what} is at {deployed}; installing {target} would be a downgrade",
            hint="kymamesh does not downgrade Istio; install a release of "
            f"{deployed.major}.{deployed.minor} at {deployed} or newer, or uninstall first",
        )
    reach = 2 if revision_based else 1
    if target.major != deployed.major or target.minor - deployed.minor > reach:
        if revision_based:
            hint = (
                f"upgrade by revisions at most two minors at a time: first to "
                f"{deployed.major}.{deployed.minor + 2}"
            )
        else:
            hint = (
                f"upgrade in place one minor at a time (first --istio "
                f"{deployed.major}.{deployed.minor + 1}), or by revisions "
                "(--revision-based), which spans up to two minors"
            )
        raise VersionGateError(
            f"{what} is at {deployed}; {target} is {target.minor - deployed.minor} minor "
            f"versions ahead, more than {'a revision-based' if revision_based else 'an in-place'} "
            "upgrade spans",
            hint=hint,
        )


def check_supported_for_adoption(found: Version, oldest: Version, newest: Version) -> None:
    """An existing istiod must be of a supported minor, or one below the oldest of them
    (so that kymamesh can patch it, then upgrade it)."""
    if found.major == newest.major and oldest.minor - 1 <= found.minor <= newest.minor:
        return
    raise PreconditionError(
        f"istiod runs Istio {found}; kymamesh supports adopting "
        f"{oldest.major}.{oldest.minor - 1}.x to {newest.major}.{newest.minor}.x",
        hint=f"upgrade the existing Istio to {oldest.major}.{oldest.minor}.x or newer first"
        if found < oldest
        else "use a kymamesh release that supports this Istio",
    )
