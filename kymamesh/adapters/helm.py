"""The Helm adapter: pyhelm3 over the real `helm` binary (Helm 4 first, 3.18+ works).

pyhelm3 is asynchronous; kymamesh runs one Helm command at a time, so each
method here runs its coroutine to completion and returns plain data.

Helm talks to the API server on its own, so a transient fault there (a refused
or reset connection, a reply cut short, 429, 5xx, an apiserver asking to retry)
fails a helm command. Reads of a release (status, get, history) and upgrades
(`upgrade --install` of a chart with fixed values: the same command converges)
are retried on such faults, with a bound on attempts and time; any other
failure (a bad chart, invalid values, a refused object) is reported at once.

Starting helm costs a tenth to a third of a second per command, so reads avoid
it: a release is read from where Helm stores it (Secrets `sh.helm.release.v1.*`,
Helm's default storage, through the `release_secrets` reader the caller gives),
and a local chart's metadata from its Chart.yaml. helm itself runs only to
install, upgrade, render, pull and uninstall, and for reads when Helm keeps its
releases elsewhere (HELM_DRIVER=configmap, sql, memory).
"""

from __future__ import annotations

import atexit
import base64
import gzip
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from kymamesh.errors import (
    ChartSourceError,
    ClusterUnreachableError,
    HelmMissingError,
    KymameshError,
)
from kymamesh.istio.values import Values
from kymamesh.istio.versions import Version

T = TypeVar("T")
_log = logging.getLogger("kymamesh.adapters.helm")


class HelmError(KymameshError):
    code = "helm"


@dataclass(frozen=True)
class LoadedChart:
    """A chart ready to install: where it came from and its metadata."""

    name: str
    version: Version
    app_version: str
    source: str
    handle: Any  # the pyhelm3 Chart; None until helm needs it (a local chart read by kymamesh)
    metadata: Mapping[str, Any] | None = field(default=None, compare=False)  # its Chart.yaml


@dataclass(frozen=True)
class DeployedRelease:
    name: str
    namespace: str
    revision: int
    status: str
    chart: str
    chart_version: Version
    app_version: str
    values: Values  # the user-supplied values of the current revision
    description: str = ""  # the current revision's description (helm history)
    # the release's own labels (`helm upgrade --labels`), when read from Helm's Secrets
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)
    # the revision's manifest, when it was read with the rest (see `Helm.manifest`)
    manifest: str | None = field(default=None, compare=False, repr=False)


# The release label every helm upgrade kymamesh runs sets: a new value per attempt. Helm keeps
# release labels on every later revision (a person's own `helm upgrade` included), so its
# presence says kymamesh made the release, and a pending revision carrying the value of
# this run's last attempt, at the revision number that attempt would make, is that attempt's.
ATTEMPT_LABEL = "kymamesh.io/attempt"
HISTORY_MAX = 10  # revisions helm keeps per release (`--history-max`)
# The labels Helm sets on a release record itself; the others are the release's own.
_HELM_RECORD_LABELS = frozenset({"name", "owner", "status", "version", "createdAt", "modifiedAt"})

# (namespace, label selector) -> the Secrets found, as dicts of the API's JSON
ReleaseSecrets = Callable[[str, str], list[dict[str, Any]]]
RELEASE_SECRET_TYPE = "helm.sh/release.v1"


def _stored_in_secrets() -> bool:
    """Whether helm keeps releases in Secrets, as it does unless HELM_DRIVER says otherwise."""
    return os.environ.get("HELM_DRIVER", "").strip().lower() in ("", "secret", "secrets")


def decode_release(secret: dict[str, Any]) -> dict[str, Any]:
    """Helm's record of one release revision, out of its Secret: base64 (the API's) of
    base64 (Helm's) of gzip (when Helm compressed it) of JSON."""
    payload = base64.b64decode(base64.b64decode(secret["data"]["release"]))
    if payload[:2] == b"\x1f\x8b":
        payload = gzip.decompress(payload)
    record = json.loads(payload)
    if not isinstance(record, dict):
        raise ValueError("not a release record")
    return record


def _secret_revision(secret: dict[str, Any]) -> int:
    """The revision a release Secret holds, from its `version` label (-1 when unreadable)."""
    label = str(((secret.get("metadata") or {}).get("labels") or {}).get("version", ""))
    return int(label) if label.isdigit() else -1


def find_helm(explicit: str | None) -> str:
    """`--helm PATH`, else KYMAMESH_HELM, else `helm` on PATH."""
    candidate = explicit or os.environ.get("KYMAMESH_HELM") or shutil.which("helm")
    if not candidate:
        raise HelmMissingError(
            "no helm binary found (looked at --helm, KYMAMESH_HELM and PATH)",
            hint="install Helm 4 (or 3.18+) and put it on PATH, or pass --helm PATH",
        )
    path = Path(candidate)
    if not (path.is_file() and os.access(path, os.X_OK)) and not shutil.which(candidate):
        raise HelmMissingError(
            f"helm binary '{candidate}' does not exist or is not executable",
            hint="pass --helm with the path of a Helm 4 (or 3.18+) binary",
        )
    return str(path if path.is_file() else shutil.which(candidate))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # only when helm runs: a converged re-run needs none of it

    try:
        return asyncio.run(coro)
    finally:
        for relay in _RELAYS:
            relay()


# With -v, helm's own output (its stderr; with --debug for the commands that write) is
# shown as it was written: helm runs through a small wrapper that copies its stderr to a
# log, and after each helm command the new lines are passed on (`Helm(output=...)`).
_RELAYS: list[Callable[[], None]] = []
_WRAPPER = """#!{python}
import subprocess, sys
helm = subprocess.Popen([{helm!r}, *sys.argv[1:]], stderr=subprocess.PIPE)
with open({log!r}, "ab") as log:
    for line in helm.stderr:
        sys.stderr.buffer.write(line)
        log.write(line)
sys.exit(helm.wait())
"""


def _output_wrapper(executable: str) -> tuple[str, Path]:
    """A wrapper for `executable` that also writes its stderr to a log; (wrapper, log)."""
    import atexit
    import shutil
    import sys
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="kymamesh-helm-"))
    atexit.register(shutil.rmtree, folder, True)
    log = folder / "helm.log"
    log.touch()
    wrapper = folder / "helm"
    wrapper.write_text(_WRAPPER.format(python=sys.executable, helm=executable, log=str(log)))
    wrapper.chmod(0o700)
    return str(wrapper), log


HELM_ATTEMPTS = 4  # one command, tried at most this often on transient faults
HELM_RETRY_WITHIN_S = 120.0  # no new attempt once this long has passed since the first

# What helm (its Go HTTP client, client-go, the apiserver) says when a request failed
# on the way rather than on its merits; lower case.
_TRANSIENT_FAULTS = re.compile(
    "|".join(
        [
            r"connection refused",
            r"connection reset by peer",
            r"broken pipe",
            r"unexpected eof",
            r"\beof\b\s*$",
            r"i/o timeout",
            r"tls handshake timeout",
            r"http2: (server sent goaway|client connection lost|client connection force closed)",
            r"use of closed network connection",
            r"please retry",
            r"try again later",
            r"too many requests",
            r"the server is currently unable to handle the request",
            r"the server was unable to return a response in the time allotted",
            r"an error on the server .* has prevented the request from succeeding",
            r"internal error occurred",
            r"service unavailable",
            r"bad gateway",
            r"gateway timeout",
            r"etcdserver: (request timed out|leader changed|too many requests)",
        ]
    ),
    re.MULTILINE,
)


def is_transient(message: str) -> bool:
    """Whether a helm failure came from the way to the API server, not from what was asked."""
    return _TRANSIENT_FAULTS.search(message.lower()) is not None


def _retrying(what: str, call: Callable[[], T]) -> T:
    """Run `call` (one helm command); again on a transient fault, within the bounds."""
    from pyhelm3 import errors

    def transient(exc: BaseException) -> bool:
        return isinstance(exc, errors.Error) and is_transient(_helm_message(exc))

    def log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        _log.info(
            "%s: transient fault (attempt %d of %d), retrying: %s",
            what,
            state.attempt_number,
            HELM_ATTEMPTS,
            _helm_message(exc) if exc else "",
        )

    retrying = Retrying(
        retry=retry_if_exception(transient),
        stop=stop_after_attempt(HELM_ATTEMPTS) | stop_after_delay(HELM_RETRY_WITHIN_S),
        wait=wait_exponential(multiplier=0.5, max=4),
        before_sleep=log,
        reraise=True,
    )
    return retrying(call)


def _helm_message(exc: BaseException) -> str:
    stderr = getattr(exc, "stderr", b"")
    text = stderr.decode(errors="replace").strip() if isinstance(stderr, bytes) else str(exc)
    return text or str(exc)


@dataclass
class _Attempt:
    """One attempt of a helm upgrade: the revision it makes, and the value of its label."""

    revision: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    tried: bool = False


class Helm:
    def __init__(
        self,
        executable: str,
        kubeconfig: str | None,
        context: str | None,
        fence: Callable[[], None] | None = None,
        release_secrets: ReleaseSecrets | None = None,
        drop_release_secret: Callable[[str, str], None] | None = None,
        output: Callable[[str], None] | None = None,
    ) -> None:
        """`fence` is called before every write (it raises when the run lost its lock);
        `release_secrets` lists Secrets (see the module docstring); `drop_release_secret`
        deletes one (namespace, name): a revision this run's own failed attempt left pending;
        `output` (with -v) is given each line helm writes to its stderr, and the commands
        that write run with --debug."""
        self.executable = executable
        self._run_as = executable
        self._debug = output is not None
        if output is not None:
            self._run_as, log = _output_wrapper(executable)
            seen = [0]

            def relay() -> None:
                with log.open("rb") as fh:
                    fh.seek(seen[0])
                    data = fh.read()
                seen[0] += len(data)
                for line in data.decode("utf-8", "replace").splitlines():
                    output(line)

            _RELAYS.append(relay)
        self._kubeconfig = kubeconfig
        self._context = context
        self._fence = fence or (lambda: None)
        self._secrets = release_secrets if _stored_in_secrets() else None
        self._drop = drop_release_secret if self._secrets is not None else None
        self._client_: Any = None
        self._command_: Any = None
        self._handles: dict[str, Any] = {}
        self._downloads: Path | None = None  # oci:// charts fetched over plain HTTP

    @property
    def _client(self) -> Any:
        """The pyhelm3 client, made (and helm's version checked) on first use."""
        if self._client_ is None:
            from pyhelm3 import Client, Command

            command = Command(
                executable=self._run_as,
                kubeconfig=Path(self._kubeconfig) if self._kubeconfig else None,
                kubecontext=self._context,
            )
            try:
                client = Client(command, executable=self._run_as)
            except Exception as exc:
                raise HelmMissingError(
                    f"cannot run helm at {self.executable}: {exc}",
                    hint="use a Helm 4 (or 3.18+) release build",
                ) from None
            if client.version.major < 3 or (
                client.version.major == 3 and client.version.minor < 18
            ):
                raise HelmMissingError(
                    f"helm at {self.executable} is {client.version}; kymamesh needs Helm 4 "
                    "or 3.18+",
                    hint="install a newer Helm and pass --helm PATH",
                )
            self._command_ = command
            self._client_ = client
        return self._client_

    @property
    def _command(self) -> Any:
        """pyhelm3's public command layer, the one the client runs (made by `_client`,
        which checks helm's version first)."""
        self._client  # noqa: B018
        return self._command_

    def check(self) -> None:
        """Refuse a helm binary that cannot run or is too old (before the first write)."""
        self._client  # noqa: B018

    @property
    def version(self) -> str:
        return str(self._client.version)

    @property
    def major(self) -> int:
        return int(self._client.version.major)

    # -- charts --------------------------------------------------------------

    def load_local(self, charts_dir: Path, chart: str) -> LoadedChart:
        """A chart from `--charts-dir`: a folder `CHART/` or a package `CHART-*.tgz`."""
        folder = charts_dir / chart
        candidates: list[Path] = []
        if (folder / "Chart.yaml").is_file():
            candidates.append(folder)
        candidates += sorted(charts_dir.glob(f"{chart}-*.tgz")) + sorted(
            charts_dir.glob(f"{chart}.tgz")
        )
        candidates = [c for c in candidates if c.is_dir() or _package_chart_name(c) == chart]
        if not candidates:
            raise ChartSourceError(
                f"no chart '{chart}' in {charts_dir} (expected a folder {chart}/ with a "
                f"Chart.yaml, or a package {chart}-VERSION.tgz)",
                hint="run `kymamesh charts pull --dest DIR` to fetch the pinned charts",
            )
        if len(candidates) > 1:
            names = ", ".join(c.name for c in candidates)
            raise ChartSourceError(
                f"more than one chart '{chart}' in {charts_dir}: {names}",
                hint="keep one folder or package per chart",
            )
        return _local_chart(candidates[0].resolve())

    def load_remote(
        self, chart: str, repo: str, version: Version, plain_http: bool = False
    ) -> LoadedChart:
        if repo.startswith("oci://") and plain_http:
            # pyhelm3 cannot pass --plain-http: fetch the package once, use it as a local chart
            if self._downloads is None:
                self._downloads = Path(tempfile.mkdtemp(prefix="kymamesh-charts-"))
                atexit.register(shutil.rmtree, self._downloads, True)
            folder = self._downloads / f"{chart}-{version}"
            package = self.pull(chart, repo, version, folder, plain_http=True)
            loaded = _local_chart(package.resolve())
            return replace(loaded, source=str(package))
        if repo.startswith("oci://"):
            return self._load(f"{repo.rstrip('/')}/{chart}", repo=None, version=str(version))
        return self._load(chart, repo=repo, version=str(version))

    def _load(self, ref: str, repo: str | None, version: str | None) -> LoadedChart:
        from pyhelm3 import errors

        try:
            handle = _run(self._client.get_chart(ref, repo=repo, version=version))
        except errors.Error as exc:
            where = f"{repo}/{ref}" if repo else ref
            raise ChartSourceError(
                f"cannot load chart {where}"
                + (f" version {version}" if version else "")
                + f": {_helm_message(exc)}",
                hint="if the chart repository cannot be reached from here, fetch the charts "
                "elsewhere with `kymamesh charts pull --dest DIR` and pass --charts-dir DIR",
            ) from None
        meta = handle.metadata
        return LoadedChart(
            name=str(meta.name),
            version=Version.parse(str(meta.version)),
            app_version=str(meta.app_version or ""),
            source=f"{repo}/{ref}" if repo else ref,
            handle=handle,
        )

    def _handle(self, chart: LoadedChart) -> Any:
        """The pyhelm3 chart helm installs or renders: a local chart's is made from the
        Chart.yaml already read (as `helm show chart` would give it), else helm loads it."""
        if chart.handle is not None:
            return chart.handle
        if chart.source not in self._handles:
            from pydantic import ValidationError
            from pyhelm3.models import Chart, ChartMetadata

            try:
                handle = Chart(
                    self._command,
                    ref=Path(chart.source),
                    metadata=ChartMetadata(**(chart.metadata or {})),
                )
            except ValidationError:  # let helm read it, and say what is wrong
                handle = self._load(chart.source, repo=None, version=None).handle
            self._handles[chart.source] = handle
        return self._handles[chart.source]

    def pull(
        self, chart: str, repo: str, version: Version, dest: Path, plain_http: bool = False
    ) -> Path:
        """Download one chart package into `dest` (for `charts pull`)."""
        from pyhelm3 import errors

        dest.mkdir(parents=True, exist_ok=True)
        ref = f"{repo.rstrip('/')}/{chart}" if repo.startswith("oci://") else chart
        args = ["pull", ref, "--version", str(version), "--destination", str(dest)]
        if not repo.startswith("oci://"):
            args += ["--repo", repo]
        elif plain_http:
            args.append("--plain-http")
        try:
            _run(self._command.run(args))
        except errors.Error as exc:
            raise ChartSourceError(
                f"cannot download chart {chart} {version} from {repo}: {_helm_message(exc)}",
                hint="check the network access to the chart repository, or pass --repo",
            ) from None
        return dest / f"{chart}-{version}.tgz"

    def chart_versions(self, chart: str, repo: str, plain_http: bool = False) -> list[Version]:
        """The versions of `chart` a source serves (read without helm)."""
        return chart_versions(chart, repo, plain_http)

    # -- releases --------------------------------------------------------------

    def _latest(self, release: str, namespace: str) -> dict[str, Any] | None:
        """The Secret of the release's latest revision; None when there is no such release."""
        assert self._secrets is not None
        found = [
            s
            for s in self._secrets(namespace, f"owner=helm,name={release}")
            if s.get("type") == RELEASE_SECRET_TYPE
        ]
        return max(found, key=_secret_revision) if found else None

    def _stored(self, release: str, namespace: str) -> dict[str, Any] | None:
        """The record of the release's latest revision (what `helm status` shows), read
        from its Secret; None when there is no such release."""
        latest = self._latest(release, namespace)
        if latest is None:
            return None
        return self._record(release, namespace, latest)

    @staticmethod
    def _record(release: str, namespace: str, latest: dict[str, Any]) -> dict[str, Any]:
        try:
            return decode_release(latest)
        except (KeyError, TypeError, ValueError, OSError, EOFError) as exc:
            name = (latest.get("metadata") or {}).get("name")
            raise HelmError(
                f"cannot read Helm release {namespace}/{release}: Secret {name} does not hold "
                f"a Helm release record ({type(exc).__name__}: {exc})",
                hint=f"look at it with `helm status {release} -n {namespace}`",
            ) from None

    def deployed(self, release: str, namespace: str) -> DeployedRelease | None:
        if self._secrets is not None:
            latest = self._latest(release, namespace)
            if latest is None:
                return None
            record = self._record(release, namespace, latest)
            labels = (latest.get("metadata") or {}).get("labels") or {}
            meta = (record.get("chart") or {}).get("metadata") or {}
            info = record.get("info") or {}
            return DeployedRelease(
                name=release,
                namespace=namespace,
                revision=int(record.get("version") or 0),
                status=str(info.get("status") or ""),
                chart=str(meta.get("name") or ""),
                chart_version=Version.parse(str(meta.get("version") or "")),
                app_version=str(meta.get("appVersion") or ""),
                values=dict(record.get("config") or {}),
                description=str(info.get("description") or ""),
                labels={str(k): str(v) for k, v in labels.items() if k not in _HELM_RECORD_LABELS},
                manifest=str(record.get("manifest") or ""),
            )
        return self._deployed_by_helm(release, namespace)

    def _deployed_by_helm(self, release: str, namespace: str) -> DeployedRelease | None:
        from pyhelm3 import errors

        what = f"reading Helm release {namespace}/{release}"
        try:
            revision = _retrying(
                what,
                lambda: _run(self._client.get_current_revision(release, namespace=namespace)),
            )
            meta = _retrying(what, lambda: _run(revision.chart_metadata()))
            values = _retrying(what, lambda: _run(revision.values()))
        except errors.ReleaseNotFoundError:
            return None
        except errors.Error as exc:
            raise self._error(f"cannot read Helm release {namespace}/{release}", exc) from None
        return DeployedRelease(
            name=release,
            namespace=namespace,
            revision=int(revision.revision),
            status=str(revision.status.value),
            chart=str(meta.name),
            chart_version=Version.parse(str(meta.version)),
            app_version=str(meta.app_version or ""),
            values=dict(values or {}),
            description=str(revision.description or ""),
        )

    def manifest(
        self, release: str, namespace: str, known: DeployedRelease | None = None
    ) -> list[dict[str, Any]]:
        """The objects of the release's current revision; from `known` (that revision,
        read before and not changed since) when it carries them."""
        text = known.manifest if known is not None else None
        if text is None and self._secrets is not None:
            record = self._stored(release, namespace)
            text = "" if record is None else str(record.get("manifest") or "")
        if text is not None:
            from kymamesh.adapters import yamlfast

            return [d for d in yamlfast.load_all(text) if isinstance(d, dict) and d]
        from pyhelm3 import errors

        what = f"reading Helm release {namespace}/{release}"
        try:
            revision = _retrying(
                what,
                lambda: _run(self._client.get_current_revision(release, namespace=namespace)),
            )
            return [r for r in _retrying(what, lambda: _run(revision.resources())) if r]
        except errors.ReleaseNotFoundError:
            return []
        except errors.Error as exc:
            raise self._error(f"cannot read Helm release {namespace}/{release}", exc) from None

    def template(
        self, release: str, chart: LoadedChart, values: Values, namespace: str
    ) -> list[dict[str, Any]]:
        from pyhelm3 import errors

        try:
            objs = _run(
                self._client.template_resources(
                    self._handle(chart), release, values, include_crds=True, namespace=namespace
                )
            )
        except errors.Error as exc:
            raise self._error(f"cannot render chart {chart.name} {chart.version}", exc) from None
        return [o for o in objs if o]

    def install_or_upgrade(
        self,
        release: str,
        chart: LoadedChart,
        values: Values,
        namespace: str,
        timeout: float,
        description: str | None = None,
        take_ownership: bool = False,
    ) -> None:
        """`helm upgrade --install`. `take_ownership`: objects of the chart that exist without
        Helm's marks (applied by another installer) are adopted into the release
        (`--take-ownership`) instead of refused."""
        from pyhelm3 import errors

        handle = self._handle(chart)
        latest = self._latest(release, namespace) if self._secrets is not None else None
        # the revision the next attempt makes (if it gets that far), and its label value
        attempt = _Attempt(1 if latest is None else _secret_revision(latest) + 1)

        def upgrade() -> None:
            nonlocal attempt
            self._fence()  # before every attempt: a retry is a write too
            if attempt.tried:
                attempt = _Attempt(self._drop_own_pending(release, namespace, attempt))
            attempt.tried = True
            # pyhelm3's Command, not its Client: the client parses the new revision's
            # whole manifest with pure-Python YAML (about half a second for istiod's),
            # and kymamesh reads the manifest itself when it needs it. The command is
            # built here: pyhelm3's `install_or_upgrade` has no `--labels`.
            args: list[Any] = [
                "upgrade",
                release,
                handle.ref,
                "--install",
                "--history-max",
                str(HISTORY_MAX),
                "--namespace",
                namespace,
                "--create-namespace",
                "--timeout",
                f"{int(timeout)}s",
                "--values",
                "-",
                "--labels",
                f"{ATTEMPT_LABEL}={attempt.token}",
            ]
            if handle.repo:
                args += ["--repo", handle.repo]
            if handle.metadata.version:
                args += ["--version", str(handle.metadata.version)]
            if description:
                args += ["--description", description]
            if self._debug:
                args.append("--debug")
            if take_ownership:
                args.append("--take-ownership")
            if self.major >= 4:
                # Helm 4 applies server-side: the Kyma patch owns some fields of the
                # chart's ConfigMaps, so take them back; phase 2 then re-applies them.
                # (Helm 3 merges client-side and has no conflicts to force.)
                args.append("--force-conflicts")
            _run(self._command.run(args, json.dumps(dict(values)).encode()))

        try:
            _retrying(f"installing {release}", upgrade)
        except errors.Error as exc:
            raise self._error(
                f"helm could not install {release} ({chart.name} {chart.version})", exc
            ) from None

    def _drop_own_pending(self, release: str, namespace: str, attempt: _Attempt) -> int:
        """Before a retry: an attempt cut short by a transient fault can leave the revision
        it made `pending-*`, and helm refuses to touch a pending release ("another
        operation is in progress"). Only the attempt's own revision is dropped: pending,
        at the number it would make, and carrying its label value (a pending revision a
        person's own `helm upgrade` made is left alone; helm then names it). The retry
        starts from the last finished revision (the objects the attempt made carry the
        release's ownership, so the retry takes them over). Returns the revision the
        next attempt makes."""
        if self._drop is None:
            return attempt.revision
        latest = self._latest(release, namespace)
        if latest is None:
            return 1
        meta = latest.get("metadata") or {}
        labels = meta.get("labels") or {}
        revision = _secret_revision(latest)
        if (
            revision == attempt.revision
            and str(labels.get("status", "")).startswith("pending")
            and labels.get(ATTEMPT_LABEL) == attempt.token
        ):
            _log.info(
                "%s/%s: dropping the pending revision %s left by the failed attempt",
                namespace,
                release,
                meta.get("name"),
            )
            self._drop(namespace, str(meta["name"]))
            return revision
        return revision + 1

    def uninstall(self, release: str, namespace: str, timeout: float) -> None:
        from pyhelm3 import errors

        self._fence()
        try:
            _run(
                self._client.uninstall_release(
                    release, namespace=namespace, timeout=f"{int(timeout)}s", wait=False
                )
            )
        except errors.Error as exc:
            raise self._error(f"helm could not uninstall {namespace}/{release}", exc) from None

    @staticmethod
    def _error(what: str, exc: BaseException) -> KymameshError:
        from pyhelm3 import errors

        message = _helm_message(exc)
        if isinstance(exc, errors.ConnectionError) or "connection refused" in message.lower():
            return ClusterUnreachableError(
                f"{what}: helm cannot reach the cluster: {message}",
                hint="check that the cluster is running and --kubeconfig/--context point to it",
            )
        return HelmError(
            f"{what}: {message}",
            hint="fix what helm names above and re-run; -v shows every helm command kymamesh runs",
        )


def _package_chart_yaml(path: Path) -> bytes | None:
    """The Chart.yaml inside a chart package (`NAME/Chart.yaml`)."""
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                if len(parts) == 2 and parts[1] == "Chart.yaml":
                    fh = tar.extractfile(member)
                    return None if fh is None else fh.read()
    except (OSError, tarfile.TarError):
        return None
    return None


def _package_chart_name(path: Path) -> str | None:
    """The chart name inside a package, read from its Chart.yaml."""
    import yaml

    text = _package_chart_yaml(path)
    try:
        meta = yaml.safe_load(text) if text is not None else None
    except yaml.YAMLError:
        return None
    return str(meta.get("name")) if isinstance(meta, dict) else None


def _local_chart(path: Path) -> LoadedChart:
    """A chart folder or package, known by its Chart.yaml (checked as `helm show chart`
    would: apiVersion v1 or v2, a name, a version); helm loads it when it installs."""
    import yaml

    def refuse(why: str) -> ChartSourceError:
        return ChartSourceError(
            f"cannot load chart {path}: {why}",
            hint="point --charts-dir at chart folders or packages, e.g. the ones "
            "`kymamesh charts pull --dest DIR` fetches",
        )

    if path.is_dir():
        try:
            text = (path / "Chart.yaml").read_bytes()
        except OSError as exc:
            raise refuse(f"cannot read its Chart.yaml: {exc.strerror}") from None
    else:
        packaged = _package_chart_yaml(path)
        if packaged is None:
            raise refuse("not a chart package with a Chart.yaml")
        text = packaged
    try:
        meta = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise refuse(f"its Chart.yaml is not valid YAML ({exc})") from None
    if not isinstance(meta, dict):
        raise refuse("its Chart.yaml is not a map")
    if meta.get("apiVersion") not in ("v1", "v2"):
        raise refuse(f"its Chart.yaml has apiVersion {meta.get('apiVersion')!r}, not v1 or v2")
    if not meta.get("name"):
        raise refuse("its Chart.yaml has no name")
    try:
        version = Version.parse(str(meta.get("version") or ""))
    except KymameshError as exc:
        raise refuse(f"its Chart.yaml has a bad version: {exc.message}") from None
    return LoadedChart(
        name=str(meta["name"]),
        version=version,
        app_version=str(meta.get("appVersion") or ""),
        source=str(path),
        handle=None,
        metadata=meta,
    )


_INDEX_LIMIT = 64 * 1024 * 1024  # Istio's index.yaml is a few MB; refuse anything absurd


def chart_versions(
    chart: str, repo: str, plain_http: bool = False, timeout: float = 30.0
) -> list[Version]:
    """The versions of `chart` a chart source serves: a Helm repository's `index.yaml`,
    or an OCI registry's tag list (Docker Registry API v2, with an anonymous token when the
    registry asks for one). Versions that are not version numbers are left out."""
    try:
        if repo.startswith("oci://"):
            reference = repo.removeprefix("oci://").rstrip("/") + "/" + chart
            names = _oci_tags(reference, "http" if plain_http else "https", timeout)
        else:
            names = _index_versions(repo.rstrip("/") + "/index.yaml", chart, timeout)
    except (OSError, ValueError) as exc:
        raise ChartSourceError(
            f"cannot read the versions of chart {chart} at {repo}: {exc}",
            hint="check the network access to the chart source, or pass --repo",
        ) from None
    found = []
    for name in names:
        try:
            found.append(Version.parse(name.replace("_", "+")))  # OCI tags write + as _
        except KymameshError:
            continue
    return sorted(set(found))


def _get(url: str, timeout: float, headers: dict[str, str] | None = None) -> bytes:
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "kymamesh", **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read(_INDEX_LIMIT + 1)
    if len(body) > _INDEX_LIMIT:
        raise ValueError(f"{url} is larger than {_INDEX_LIMIT // (1024 * 1024)} MiB")
    return body


def _index_versions(url: str, chart: str, timeout: float) -> list[str]:
    from kymamesh.adapters import yamlfast

    index = yamlfast.load(_get(url, timeout).decode("utf-8"))
    entries = (index or {}).get("entries") or {} if isinstance(index, dict) else {}
    return [str(e.get("version")) for e in entries.get(chart) or () if isinstance(e, dict)]


def _oci_tags(reference: str, scheme: str, timeout: float) -> list[str]:
    import json
    import urllib.error
    import urllib.parse

    host, _, path = reference.partition("/")
    url = f"{scheme}://{host}/v2/{path}/tags/list"
    try:
        body = _get(url, timeout)
    except urllib.error.HTTPError as exc:
        challenge = exc.headers.get("WWW-Authenticate", "") if exc.code == 401 else ""
        if not challenge.lower().startswith("bearer "):
            raise
        params = dict(
            (k.strip(), v.strip().strip('"'))
            for k, _, v in (part.partition("=") for part in challenge[7:].split(","))
        )
        wanted: dict[str, str] = {k: params[k] for k in ("service", "scope") if k in params}
        query = urllib.parse.urlencode(wanted or {"scope": f"repository:{path}:pull"})
        token = json.loads(_get(f"{params['realm']}?{query}", timeout))
        bearer = token.get("token") or token.get("access_token")
        body = _get(url, timeout, {"Authorization": f"Bearer {bearer}"})
    return [str(t) for t in json.loads(body).get("tags") or ()]
