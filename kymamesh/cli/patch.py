"""`kymamesh patch`: apply the Kyma patch (phase 2) to a running Istio."""

from __future__ import annotations


def patch() -> None:
    """Apply the Kyma patch to a running Istio (being built)."""
    raise SystemExit(1)
