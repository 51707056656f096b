"""Helm values: merging in order, `--set` parsing, and the security check.

Values reach a chart from, in order: the chart's defaults, kymamesh's files in
`resources/istio/values/`, the user's `-f` files, the user's `--set`. A user
file is split by chart: its top-level keys are chart names (`base`, `istiod`,
`gateway`), as are the first part of every `--set` key. Each source is kept
with its origin so that a refused value names the file or flag it came from.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kymamesh import userfiles
from kymamesh.errors import InsecureValuesError, UsageError
from kymamesh.resources import load_yaml, resources_dir
from kymamesh.security import lookup_value, security_rules

Values = dict[str, Any]


@dataclass(frozen=True)
class ValueSource:
    """Values for some charts, and where they came from (for error messages)."""

    origin: str
    by_chart: Mapping[str, Values]


@dataclass
class ValueStack:
    """Sources in precedence order, lowest first."""

    sources: list[ValueSource] = field(default_factory=list)

    def merged(self, chart: str) -> Values:
        result: Values = {}
        for source in self.sources:
            result = deep_merge(result, source.by_chart.get(chart, {}))
        return result

    def origin_of(self, chart: str, dotted: str) -> str:
        """The last source that set `dotted` for `chart`, or replaced a map above it."""
        for source in reversed(self.sources):
            if _sets(source.by_chart.get(chart, {}), dotted):
                return source.origin
        return "chart defaults"


def _sets(values: Mapping[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, Mapping):
            return True  # the key itself, or a null or scalar that replaces its parent
    return True


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Values:
    """Maps merge key by key; anything else in `override` replaces."""
    result: Values = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


_INT64 = range(-(2**63), 2**63)


def _scalar(text: str) -> Any:
    """Type a `--set` value the way Helm does.

    true/false/null in any case are a boolean or null; `0` and a base-10
    integer that does not start with 0 are an int (so `007` stays a string);
    everything else, `no` and `off` included, is a string. A value starting with
    `[` or `{` that is JSON is taken as JSON (kymamesh's addition).
    """
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    if text == "0":
        return 0
    if _INTEGER.fullmatch(text) and not text.startswith("0") and int(text) in _INT64:
        return int(text)
    if text.startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _split_key(key: str) -> list[str]:
    """Split a --set key on dots; `\\.` is a dot inside a name, as in Helm."""
    return [part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", key)]


def parse_set(expressions: Iterable[str], charts: Iterable[str]) -> ValueSource:
    """`--set CHART.key.path=value`, repeatable."""
    known = sorted(charts)
    by_chart: dict[str, Values] = {}
    for expr in expressions:
        key, sep, raw = expr.partition("=")
        if not sep or not key:
            raise UsageError(
                f"--set '{expr}' is not KEY=VALUE",
                hint="write it as CHART.path.to.key=value, e.g. istiod.pilot.replicaCount=2",
            )
        chart, *parts = _split_key(key)
        path = ".".join(parts)
        if chart not in known or not path:
            raise UsageError(
                f"--set '{expr}' does not start with a chart name",
                hint=f"prefix the key with one of {', '.join(known)}, "
                "e.g. istiod.meshConfig.accessLogFile=/dev/stdout",
            )
        node = by_chart.setdefault(chart, {})
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = _scalar(raw)
    return ValueSource(origin="--set", by_chart=by_chart)


def load_user_file(path: Path, charts: Iterable[str]) -> ValueSource:
    """A `-f FILE`: a map from chart name to that chart's values."""
    known = sorted(charts)
    shape = f"a YAML map from chart name ({', '.join(known)}) to that chart's values"
    raw = userfiles.read(path, f"values file {path}", shape) or {}
    if not isinstance(raw, dict):
        raise UsageError(
            f"values file {path} must be a map of chart names to values, "
            f"not a YAML {type(raw).__name__}",
            hint=f"write {shape}, e.g. `istiod: {{pilot: {{replicaCount: 2}}}}`",
        )
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise UsageError(
            f"values file {path} has top-level keys {', '.join(unknown)}, which are not charts",
            hint=f"put each chart's values under its name: {', '.join(known)}",
        )
    for chart, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise UsageError(
                f"values file {path}: '{chart}' must be a map, not a YAML {type(values).__name__}",
                hint=f"put {chart}'s values under it as keys, e.g. `{chart}: {{key: value}}`",
            )
    return ValueSource(origin=str(path), by_chart={k: v or {} for k, v in raw.items()})


def project_source(charts: Iterable[str]) -> ValueSource:
    """kymamesh's own values, from `resources/istio/values/CHART.yaml`."""
    by_chart: dict[str, Values] = {}
    for chart in charts:
        path = resources_dir() / "values" / f"{chart}.yaml"
        if path.exists():
            by_chart[chart] = load_yaml(path) or {}
    return ValueSource(
        origin=f"kymamesh defaults ({resources_dir() / 'values'})", by_chart=by_chart
    )


def check_security(stack: ValueStack, charts: Iterable[str]) -> None:
    """Refuse values that weaken mutual TLS, naming the key and where it came from.

    Each value is judged as the chart will read it (`kymamesh.security`): every
    spelling of off, and a null, which drops the key back to the default.
    """
    problems: list[str] = []
    for rule in security_rules():
        if rule.chart not in charts:
            continue
        value, absent = lookup_value(stack.merged(rule.chart), rule.key)
        problem = rule.problem(value, absent)
        if problem:
            origin = stack.origin_of(rule.chart, rule.key)
            problems.append(f"{rule.chart}.{rule.key} from {origin}: {problem}")
    if problems:
        raise InsecureValuesError(
            "refusing insecure values (nothing was changed):\n  " + "\n  ".join(problems),
            hint="remove these values or set them secure (a switch: true); "
            "kymamesh always installs Istio with mutual TLS on",
        )
