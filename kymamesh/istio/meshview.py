"""The mesh config istiod runs, compared with the one its ConfigMap holds.

istiod shows the mesh config it runs at `/debug/mesh` (read through
`Cluster.istiod_debug`): Istio's MeshConfig as the legacy golang/protobuf jsonpb encoder
writes it. That is not the ConfigMap's text: fields by their JSON names (`meshMTLS`,
where the ConfigMap may say `mesh_mTLS`), durations in seconds (`"0.250s"` for
`250ms`), enums by name (`TLSV1_3` for `2`), 64-bit integers as strings, and a field
at its zero value (false, 0, "", the first enum member) left out. `differences` reads
both through the schema of `resources/istio/meshconfig.yaml` (`kymamesh.istio.meshschema`)
and reports each field set in the ConfigMap whose value istiod does not run: the sign
that istiod rejected the ConfigMap ("invalid mesh config, using last known state") and
runs an older one, or has not read it yet. Fields the schema does not describe inside
(`object`, `any`) are compared as JSON, leniently: a difference is reported there only
where the two certainly differ.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from kymamesh.istio.meshschema import ROOT, mesh_schema

ABSENT: Any = object()  # a field istiod's view does not have (the zero value, for jsonpb)
# How istiod merges lists of the ConfigMap into its defaults (istio's pkg/config/mesh
# ApplyMeshConfig): extension providers by name (its own `prometheus`, `envoy`, ... stay),
# trust domain aliases as a sorted union with the ones before.
_KEYED_LISTS = {("MeshConfig", "extensionProviders"): "name"}
_SUBSET_LISTS = {("MeshConfig", "trustDomainAliases")}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {
    "ns": Decimal(1),
    "us": Decimal(1000),
    "µs": Decimal(1000),
    "μs": Decimal(1000),
    "ms": Decimal(10**6),
    "s": Decimal(10**9),
    "m": Decimal(60 * 10**9),
    "h": Decimal(3600 * 10**9),
}


@dataclass(frozen=True)
class Difference:
    """One field set in the ConfigMap that istiod does not run with that value."""

    path: str  # as the ConfigMap spells it: `mesh_mTLS.min_protocol_version`, `a[0].b`
    written: Any  # the ConfigMap's value
    running: Any  # istiod's, or ABSENT

    def describe(self) -> str:
        running = "unset" if self.running is ABSENT else _shown(self.running)
        return f"{self.path} is {_shown(self.written)} in the ConfigMap, {running} in istiod"

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.path,
            "configMap": self.written,
            "istiod": None if self.running is ABSENT else self.running,
        }


def differences(written: Mapping[str, Any], running: Mapping[str, Any]) -> list[Difference]:
    """Each field set (not null) in the ConfigMap's mesh config `written` whose value is not
    the one in istiod's view `running` (the JSON of `/debug/mesh`)."""
    out: list[Difference] = []
    _Compare(out).value(written, running, ROOT, "")
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def camel(name: str) -> str:
    """A proto field name as protobuf's JSON name: `mesh_mTLS` -> `meshMTLS`."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


class _Compare:
    def __init__(self, out: list[Difference]) -> None:
        self.out = out
        self.schema = mesh_schema()

    def differ(self, path: str, written: Any, running: Any) -> None:
        self.out.append(Difference(path, written, running))

    def value(self, w: Any, r: Any, kind: str, path: str) -> None:
        if w is None:
            return  # null leaves the field unset
        messages, enums = self.schema["messages"], self.schema["enums"]
        if kind in messages:
            self.message(w, r, kind, path)
        elif kind in enums:
            names = enums[kind]
            want = _enum_name(w, names)
            have = names[0] if r is ABSENT else r
            if want is None or want != have:
                self.differ(path, w, r)
        elif kind in ("object", "any"):
            self.generic(w, r, path)
        elif not _same_scalar(w, r, kind):
            self.differ(path, w, r)

    def message(self, w: Any, r: Any, name: str, path: str) -> None:
        if not isinstance(w, Mapping):
            self.differ(path, w, r)
            return
        if r is ABSENT:  # istiod has none of it: one difference for the whole, if any
            inner: list[Difference] = []
            _Compare(inner).message(w, {}, name, path)
            if inner:
                self.differ(path, w, r)
            return
        have: Mapping[str, Any] = r if isinstance(r, Mapping) else {}
        body = self.schema["messages"][name]
        for key, item in w.items():
            where = _join(path, str(key))
            if item is None:
                continue
            field = body["by_any"].get(str(key))
            if field is None:  # not in the schema: istiod's view decides
                found = have.get(str(key), have.get(camel(str(key)), ABSENT))
                self.generic(item, found, where)
                continue
            found = have.get(field["json"], ABSENT)
            merged = (name, field["json"])
            if "list" in field and merged in _KEYED_LISTS:
                self.keyed(item, found, field["list"], _KEYED_LISTS[merged], where)
            elif "list" in field and merged in _SUBSET_LISTS:
                self.subset(item, found, where)
            elif "list" in field:
                self.sequence(item, found, field["list"], where)
            elif "map" in field:
                if not isinstance(item, Mapping):
                    self.differ(where, item, found)
                    continue
                entries: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
                for k, element in item.items():
                    self.value(element, entries.get(str(k), ABSENT), field["map"], f"{where}.{k}")
            else:
                self.value(item, found, field["type"], where)

    def sequence(self, w: Any, r: Any, kind: str, path: str) -> None:
        have = [] if r is ABSENT else r
        if not isinstance(w, list) or not isinstance(have, list) or len(w) != len(have):
            self.differ(path, w, r)
            return
        for n, (element, other) in enumerate(zip(w, have, strict=True)):
            self.value(element, other, kind, f"{path}[{n}]")

    def keyed(self, w: Any, r: Any, kind: str, key: str, path: str) -> None:
        """A list istiod merges into its own by `key`: each entry against istiod's of that key."""
        have = [] if r is ABSENT else r
        if not isinstance(w, list) or not isinstance(have, list):
            self.differ(path, w, r)
            return
        by_key = {e.get(key): e for e in have if isinstance(e, Mapping)}
        for n, element in enumerate(w):
            name = element.get(key) if isinstance(element, Mapping) else None
            where = f"{path}[{n}]" if name is None else f"{path}[{key}={name}]"
            self.value(element, by_key.get(name, ABSENT), kind, where)

    def subset(self, w: Any, r: Any, path: str) -> None:
        """A list istiod unites with the entries it had: each entry must be in istiod's."""
        have = [] if r is ABSENT else r
        if not isinstance(w, list) or not isinstance(have, list) or any(e not in have for e in w):
            self.differ(path, w, r)

    def generic(self, w: Any, r: Any, path: str) -> None:
        """Without a schema: maps by key (either spelling), lists in order, scalars leniently."""
        if w is None:
            return
        if isinstance(w, Mapping):
            have: Mapping[str, Any] = r if isinstance(r, Mapping) else {}
            if r is not ABSENT and not isinstance(r, Mapping):
                self.differ(path, w, r)
                return
            for key, item in w.items():
                found = have.get(str(key), have.get(camel(str(key)), ABSENT))
                self.generic(item, found, _join(path, str(key)))
        elif isinstance(w, list):
            self.sequence(w, r, "any", path)
        elif not _same_scalar(w, r, "any"):
            self.differ(path, w, r)


def _enum_name(value: Any, names: list[str]) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value in names:
        return value
    if isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    return None


def _same_scalar(w: Any, r: Any, kind: str) -> bool:
    """The ConfigMap's value `w` of a scalar `kind` is what istiod runs (`r`)?"""
    if kind == "bool":
        return isinstance(w, bool) and w == (False if r is ABSENT else r)
    if kind == "string":
        return isinstance(w, str) and w == ("" if r is ABSENT else r)
    if kind in ("int", "uint"):
        if isinstance(w, bool) or not isinstance(w, int | str):
            return False
        return _integer(w) is not None and _integer(w) == _integer(0 if r is ABSENT else r)
    if kind == "number":
        return _number(w) is not None and _same_number(_number(w), _number(0 if r is ABSENT else r))
    if kind == "duration":
        want = _duration_ns(w) if isinstance(w, str) else None
        return want is not None and want == _duration_ns("0s" if r is ABSENT else r)
    # "any": no schema; a difference only where the two certainly differ
    if r is ABSENT:
        return _zero_like(w)
    if w == r and type(w) is type(r):
        return True
    if isinstance(w, bool) or isinstance(r, bool):
        return False
    if isinstance(w, int | float) or isinstance(r, int | float):  # int64 as a string, ...
        return _same_number(_number(w), _number(r))
    if isinstance(w, str) and isinstance(r, str):
        dw, dr = _duration_ns(w), _duration_ns(r)
        return dw is not None and dw == dr
    return False


def _zero_like(value: Any) -> bool:
    if isinstance(value, str):
        return value == "" or _duration_ns(value) == 0
    return value in (False, 0, 0.0) or value == [] or value == {}


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # also "NaN", "Infinity", "-Infinity"
        except ValueError:
            return None
    return None


def _same_number(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return False
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=1e-9)


def _duration_ns(value: Any) -> Decimal | None:
    """Nanoseconds of a duration as Go's time.ParseDuration reads it ("1m30s", "250ms")
    and as jsonpb writes it ("0.250s"); None when it is not one."""
    if not isinstance(value, str) or not value:
        return None
    text, sign = value, Decimal(1)
    if text[0] in "+-":
        sign = Decimal(-1) if text[0] == "-" else sign
        text = text[1:]
    if text == "0":
        return Decimal(0)
    total, pos = Decimal(0), 0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        pos = m.end()
        try:
            total += Decimal(m.group(1)) * _UNIT_NS[m.group(2)]
        except InvalidOperation:
            return None
    return sign * total if pos == len(text) and pos else None


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


# -- asking istiod ---------------------------------------------------------------------

MESH_VIEW = "/debug/mesh"
REJECTED = "invalid mesh config"  # istiod's warning when it cannot use the mesh config
# How long a changed ConfigMap may take to reach a Pod's mounted file: the kubelet's sync
# period (1 min) and its ConfigMap cache (1 min). Within it a difference may be istiod not
# having read the ConfigMap yet rather than having rejected it.
PROPAGATION_S = 120.0

APPLIED, DIFFERS, REJECTED_STATE, PENDING, UNCHECKED = (
    "applied",
    "differs",
    "rejected",
    "pending",
    "unchecked",
)


@dataclass(frozen=True)
class RunningMesh:
    """What one istiod Pod runs, against its revision's ConfigMap."""

    namespace: str
    pod: str  # "" when no Pod could be asked
    revision: str
    configmap: str  # NAMESPACE/NAME
    state: str  # applied, differs, rejected, pending, unchecked
    differences: tuple[Difference, ...] = ()
    reason: str = ""  # istiod's own words on the rejection, or why it was not checked
    age: float | None = None  # seconds since the ConfigMap was last written
    fix: str = "write a valid mesh config into the ConfigMap"  # what to do (status sets it)

    @property
    def who(self) -> str:
        if self.pod:
            return f"istiod {self.namespace}/{self.pod}"
        return f"istiod of revision {self.revision} in {self.namespace}"

    def problem(self) -> str | None:
        """The line `status` shows when this makes the mesh unhealthy; None otherwise."""
        fields = "; ".join(d.describe() for d in self.differences)
        log = f"`kubectl -n {self.namespace} logs {self.pod or 'deploy/istiod'}`"
        fix = self.fix
        if self.state == REJECTED_STATE:
            said = f' (istiod: "{self.reason}")' if self.reason else ""
            return (
                f"{self.who} rejected the mesh config of ConfigMap {self.configmap} and runs "
                f"an older one{said}" + (f": {fields}" if fields else "") + f"; {fix}; "
                f"istiod's log: {log}"
            )
        if self.state == DIFFERS:
            return (
                f"{self.who} does not run the mesh config of ConfigMap {self.configmap}: "
                f"{fields}; {fix}; why, in istiod's log: {log}"
            )
        if self.state == UNCHECKED:
            return (
                f"could not check the mesh config {self.who} runs (ConfigMap "
                f"{self.configmap}): {self.reason}"
            )
        return None

    def note(self) -> str | None:
        """For a difference within the time a ConfigMap takes to reach a Pod: advice."""
        if self.state != PENDING:
            return None
        fields = "; ".join(d.describe() for d in self.differences)
        return (
            f"{self.who} has not read ConfigMap {self.configmap} yet (written "
            f"{self.age or 0:.0f}s ago; Pods see a changed ConfigMap within about "
            f"{PROPAGATION_S / 60:.0f} minutes): {fields}; run status again then"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "pod": self.pod or None,
            "revision": self.revision,
            "configMap": self.configmap,
            "state": self.state,
            "differences": [d.to_json() for d in self.differences],
            "reason": self.reason,
        }


def last_written(configmap: Mapping[str, Any]) -> str:
    """When the ConfigMap last changed (RFC 3339, seconds): the newest time of its managed
    fields, else its creation."""
    meta = configmap.get("metadata") or {}
    times = [str(m["time"]) for m in meta.get("managedFields") or [] if m.get("time")]
    return max(times, default=str(meta.get("creationTimestamp") or ""))


def rejection(log: str) -> str:
    """istiod's last word on a mesh config it could not use, in a log: "" when none."""
    found = ""
    for line in log.splitlines():
        at = line.find(REJECTED)
        if at >= 0:
            found = line[at:].strip()
    return found


def said_after(log: str, changed: datetime | None) -> bool:
    """Whether istiod's last rejection in `log` was surely said after the ConfigMap changed
    at `changed`: a ConfigMap's write time has whole seconds, so a line within that second
    (istiod's lines start with their own time) may be about the config written before.
    True when either time is unknown."""
    last = ""
    for line in log.splitlines():
        if REJECTED in line:
            last = line
    stamp = last.split(maxsplit=1)[0] if last.strip() else ""
    try:
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return True
    if changed is None or at.tzinfo is None:
        return True
    return at >= changed + timedelta(seconds=1)


def judge(
    namespace: str,
    pod: str,
    revision: str,
    configmap: str,
    written: Mapping[str, Any],
    view: bytes,
    said: str,
    age: float | None,
    surely: bool = True,
) -> RunningMesh:
    """One istiod Pod's state from its view (`/debug/mesh`) and what its log said since the
    ConfigMap was last written (`said`, see `rejection`; `surely`: said after the write, see
    `said_after`; otherwise it counts only when the view differs from the ConfigMap)."""

    def result(state: str, found: tuple[Difference, ...] = (), reason: str = "") -> RunningMesh:
        return RunningMesh(namespace, pod, revision, configmap, state, found, reason, age)

    try:
        running = json.loads(view)
    except ValueError:
        running = None
    if not isinstance(running, Mapping):
        why = f"{MESH_VIEW} did not answer with a JSON map: {view[:80]!r}"
        return result(UNCHECKED, reason=why)
    found = tuple(differences(written, running))
    if said and (surely or found):
        return result(REJECTED_STATE, found, said)
    if not found:
        return result(APPLIED)
    return result(PENDING if age is not None and age < PROPAGATION_S else DIFFERS, found)
