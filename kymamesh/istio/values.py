"""Helm values: merging in order, `--set` parsing, and the security check.

Values reach a chart from, in order: the chart's defaults, kymamesh's files in
`resources/istio/values/`, the user's `-f` files, the user's `--set`. A user
file is split by chart: its top-level keys are chart names (`base`, `istiod`,
`gateway`), as are the first part of every `--set` key (Helm's `--set` syntax). Each source is kept
with its origin so that a refused value names the file or flag it came from.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kymamesh import userfiles
from kymamesh.errors import InsecureValuesError, UsageError
from kymamesh.istio.security import security_rules
from kymamesh.resources import load_yaml, resources_dir

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
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_INDEX = 65536  # Helm's limits: a list index, and how deep a dotted name goes
_MAX_DEPTH = 30


def _scalar(text: str) -> Any:
    """Type a `--set` value the way Helm does (its strvals `typedVal`).

    true/false/null in any case are a boolean or null; `0` and a base-10
    integer that does not start with 0 are an int (so `007` stays a string);
    everything else, `no`, `off`, `1.5` and `[false]` included, is a string.
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
    return text


class _SetSyntaxError(Exception):
    pass


class _SetParser:
    """Helm's `--set` syntax (its strvals rules), read into nested maps and lists:

    - `a.b=v`: a dot nests maps; `a=1,b=2`: a comma separates KEY=VALUE pairs;
    - `a[0]=x`, `a[0].b=x`, `a[0][1]=x`: list items by index (missing ones are null);
    - `a={x,y}`: a list value; `a=`: an empty string; `a=null`: null (Helm drops the key);
    - a backslash takes the next character as it is: `\\,` is a comma in a value,
      `\\.` a dot in a key.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _until(self, stops: str) -> tuple[str, str | None]:
        """The characters up to the first unescaped one of `stops` (consumed), and that
        stop; None as the stop at the end of the text."""
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch in stops:
                return "".join(out), ch
            if ch == "\\":
                if self.pos >= len(self.text):
                    return "".join(out), None
                ch = self.text[self.pos]
                self.pos += 1
            out.append(ch)
        return "".join(out), None

    def parse(self, data: dict[str, Any]) -> None:
        while self.pos < len(self.text):
            self._key(data, 0)

    def _key(self, data: dict[str, Any], depth: int) -> None:
        key, stop = self._until("=[,.")
        if stop is None:
            if key:
                raise _SetSyntaxError(f"key {key!r} has no value (KEY=VALUE)")
            return
        if stop == ",":
            raise _SetSyntaxError(f"key {key!r} has no value (cannot end with ,)")
        if stop == "=":
            data[key] = self._value()
            return
        if stop == "[":
            existing = data.get(key, [])
            if not isinstance(existing, list):
                raise _SetSyntaxError(f"{key!r} is set as a map or value, then used as a list")
            data[key] = self._list_item(existing, self._index(), depth)
            return
        depth += 1  # "."
        if depth > _MAX_DEPTH:
            raise _SetSyntaxError(f"a key nested more than {_MAX_DEPTH} levels")
        inner = data.get(key, {})
        if not isinstance(inner, dict):
            raise _SetSyntaxError(f"{key!r} is set as a value or list, then used as a map")
        self._key(inner, depth)
        if not inner:
            raise _SetSyntaxError(f"key map {key!r} has no value")
        data[key] = inner

    def _index(self) -> int:
        text, stop = self._until("]")
        if stop is None or not re.fullmatch(r"[+-]?[0-9]+", text):
            raise _SetSyntaxError(f"list index [{text}] is not a number in brackets")
        index = int(text)
        if index < 0 or index > _MAX_INDEX:
            raise _SetSyntaxError(f"list index {index} is not from 0 to {_MAX_INDEX}")
        return index

    def _list_item(self, items: list[Any], index: int, depth: int) -> list[Any]:
        rest, stop = self._until("[.=")
        if rest:
            raise _SetSyntaxError(f"unexpected {rest!r} after the list index [{index}]")
        items = items + [None] * (index + 1 - len(items))
        if stop == "=":
            items[index] = self._value()
        elif stop == "[":
            inner = items[index] if isinstance(items[index], list) else []
            items[index] = self._list_item(inner, self._index(), depth)
        elif stop == ".":
            inner = items[index] if isinstance(items[index], dict) else {}
            self._key(inner, depth)
            items[index] = inner
        else:
            raise _SetSyntaxError(f"the list item [{index}] has no value")
        return items

    def _value(self) -> Any:
        if self.text.startswith("{", self.pos):
            self.pos += 1
            values = []
            while True:
                text, stop = self._until(",}")
                if stop is None:
                    raise _SetSyntaxError("a list value {...} must end with '}'")
                values.append(_scalar(text))
                if stop == "}":
                    if self.text.startswith(",", self.pos):
                        self.pos += 1
                    return values
        text, _ = self._until(",")
        return _scalar(text)


_SET_HINT = (
    "write CHART.path.to.key=value (e.g. istiod.pilot.replicaCount=2); a comma separates "
    "pairs, each starting with a chart name; `\\,` is a comma inside a value, `\\.` a dot "
    "inside a key, `key={a,b}` a list, `key[0]=x` a list item"
)


def parse_set(expressions: Iterable[str], charts: Iterable[str]) -> ValueSource:
    """`--set CHART.key.path=value`, repeatable, each in Helm's `--set` syntax."""
    known = sorted(charts)
    parsed: dict[str, Any] = {}  # every flag into one map, as Helm does
    for expr in expressions:
        try:
            _SetParser(expr).parse(parsed)
        except _SetSyntaxError as exc:
            raise UsageError(f"--set '{expr}': {exc}", hint=_SET_HINT) from None
        if not expr.strip():
            raise UsageError("--set '' is not KEY=VALUE", hint=_SET_HINT)
        for chart, values in parsed.items():
            if chart not in known or not isinstance(values, dict):
                raise UsageError(
                    f"--set '{expr}': {chart!r} is not a chart name followed by a key"
                    + (" (after a comma, a new KEY=VALUE starts)" if "," in expr else ""),
                    hint=f"start every key with one of {', '.join(known)}, e.g. "
                    "istiod.meshConfig.accessLogFile=/dev/stdout; write `\\,` for a comma "
                    "inside a value",
                )
    return ValueSource(origin="--set", by_chart=parsed)


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

    Each value is judged as the chart will read it (`kymamesh.istio.security`): every
    spelling of off, and a null, which drops the key back to the default.
    """
    problems: list[str] = []
    for rule in security_rules():
        if rule.chart not in charts:
            continue
        for path, problem in rule.judge(stack.merged(rule.chart)):
            origin = stack.origin_of(rule.chart, path)
            problems.append(f"{rule.chart}.{path} from {origin}: {problem}")
    if problems:
        raise InsecureValuesError(
            "refusing insecure values (nothing was changed):\n  " + "\n  ".join(problems),
            hint="remove these values or set them secure (a switch: true); "
            "kymamesh always installs Istio with mutual TLS on",
        )


def check_mesh_config(stack: ValueStack, minor: str) -> None:
    """Refuse a `meshConfig` istiod of Istio `minor` could not read (a field of another
    type, an unknown or twice-given field), naming each field and where it came from
    (`kymamesh.istio.meshschema`). Runs after the security rules, before anything is written."""
    from kymamesh.istio.meshschema import mesh_config_problems

    mesh = stack.merged("istiod").get("meshConfig")
    problems = []
    for problem in mesh_config_problems(mesh, minor, path="meshConfig"):
        field = problem.split(":", 1)[0]
        dotted = re.sub(r"\[[0-9]+\]", "", field)
        problems.append(f"istiod.{problem} (from {stack.origin_of('istiod', dotted)})")
    if problems:
        raise UsageError(
            f"meshConfig is not a mesh config istiod {minor} can read (nothing was changed):\n  "
            + "\n  ".join(problems),
            hint="give each field the type Istio's MeshConfig has (a switch true or false, a "
            'duration a string like "5s"), and only fields it has; see '
            "docs/explanation/security.md#the-mesh-config-istiod-can-read",
        )
