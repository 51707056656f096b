"""`kymamesh inject_namespace`: apply the Kyma patch (phase 2) to a running Istio."""

from __future__ import annotations


def inject_namespace() -> None:
    """Apply the Kyma inject_namespace to a running Istio (being built)."""
    raise SystemExit(1)
