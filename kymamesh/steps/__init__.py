"""The step kinds of the Kyma patch. `KINDS` maps a kind name (as used in
`patches/kyma.yaml`) to the class that carries it out."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kymamesh.patching import StepFactory

KINDS: dict[str, StepFactory] = {}
