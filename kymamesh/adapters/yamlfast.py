"""YAML parsing with libyaml when PyYAML has it: Helm's release manifests and Istio's
mesh config are large, and the pure-Python loader spent most of a re-run's CPU on them.
Diffs are rendered with libyaml's emitter too (`inject-namespace` renders one per
Deployment).

Same safe schema as `yaml.safe_load`; errors are the same `yaml.YAMLError` classes.
Files a user gives (values, --config, kubeconfig) keep the pure-Python loader, whose
messages the documentation shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import yaml

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load(text: str | bytes | IO[str] | IO[bytes]) -> Any:
    return yaml.load(text, Loader=_Loader)


def load_all(text: str | bytes) -> Iterator[Any]:
    return yaml.load_all(text, Loader=_Loader)


def dump(obj: Any) -> str:
    """Block-style YAML with sorted keys, as `yaml.safe_dump(sort_keys=True)` gives."""
    return str(yaml.dump(obj, Dumper=_Dumper, sort_keys=True, default_flow_style=False))
