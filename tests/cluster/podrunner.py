#!/usr/bin/env python3
"""The test cluster's one real workload: istiod, run as a process for each istiod Pod.

kwok simulates every other Pod. For a Pod on the kwok node whose container runs
istiod (`args[0] == "discovery"`, as Istio's chart starts pilot-discovery), this
process does what a kubelet would, on loopback:

- its volumes (ConfigMap, Secret, projected ServiceAccount token, emptyDir, downward
  API) are written under `DIR/pods/<ns>_<name>_<uid8>/<mountPath>` and kept current
  with the kubelet's `..data` symlink swap, so istiod's file watchers see changes; istiod
  reads its files through relative paths (`./etc/istio/config/mesh`,
  `./var/lib/istio/inject`, ...) and runs with that folder as its working directory;
- it talks to the API with a token bound to its Pod, so the chart's RBAC is what it has;
- each port it listens on (8080, 15010, 15012, 15014, 15017) becomes a free loopback
  port, and its readiness probe is run against it: the Pod's Ready condition is what
  the probe says (kwok's stage leaves such Pods not Ready; see testcluster.py);
- it is restarted with a back-off when it exits, and stopped when its Pod goes away;
- the istiod binary is the build of the Istio minor that the container's image tag names
  (`.../pilot:1.31.1`, `...:1.30.3-distroless`, with a registry port or a digest); a
  minor with no build gets the nearest one (1.29 -> the 1.30 build). The choice is the
  first line of each start in the Pod's log and is recorded in `pods.json` (`istiod`).

The apiserver reaches Services (the webhooks' `service:` references) through an HTTP
CONNECT proxy on the unix socket `DIR/egress.sock` (the egress selector). Here a
CONNECT to a Service's name or ClusterIP and port goes to the loopback port of a ready
Pod behind it; with none, the answer is `503` and names what is missing, so the
apiserver's error says why, as a real cluster's would. A CONNECT to the node's kubelet
address (`--kubelet HOST:PORT`) goes to kwok's kubelet server there, which serves
`kubectl port-forward` and `kubectl logs`: for each istiod Pod this process writes a
kwok `PortForward` (each container port, and ctrlz's 9876, to its loopback port) and a
kwok `Logs` object (the container's log, in the CRI format kwok reads, in
`DIR/logs/containers/<ns>_<name>_<container>.log`, the run before in `....previous.log`),
owned by the Pod, so they go when it goes.

`DIR/pods.json` lists the running Pods (ports, pid, ready, restarts, the istiod build that
runs); istiod's output goes to `DIR/logs/pod-<ns>-<name>.log`.

Standard library only. Started and stopped by `testcluster.py up` / `down`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

ISTIOD_PORT_FLAGS = {  # containerPort -> the pilot-discovery flag that sets its address
    8080: "--httpAddr",
    15010: "--grpcAddr",
    15012: "--secureGRPCAddr",
    15014: "--monitoringAddr",
    15017: "--httpsAddr",
}
CTRLZ_PORT = 9876  # istiod's ControlZ default (--ctrlz_port)
KWOK_API = "/apis/kwok.x-k8s.io/v1alpha1"  # PortForward and Logs, read by kwok's server
TOKEN_SECONDS = 3600
SA_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # the apiserver's issuer


def log(msg: str) -> None:
    print(f"[podrunner {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def runs_istiod(pod: dict) -> bool:
    """Istio's chart starts pilot-discovery with `args: [discovery, ...]`."""
    containers = (pod.get("spec") or {}).get("containers") or []
    return any((c.get("args") or [None])[0] == "discovery" for c in containers)


_TAG_MINOR = re.compile(r"v?(\d+)\.(\d+)(?:[.+_-]|$)")


def image_minor(image: str) -> str | None:
    """The Istio minor an image's tag names: `docker.io/istio/pilot:1.31.1` -> "1.31",
    `localhost:5000/istio/pilot:1.30.3-distroless@sha256:...` -> "1.30"; None without one."""
    last = image.partition("@")[0].rpartition("/")[2]
    _, colon, tag = last.partition(":")
    m = _TAG_MINOR.match(tag) if colon else None
    return f"{int(m.group(1))}.{int(m.group(2))}" if m else None


def choose_istiod(image: str, builds: dict[str, Path]) -> tuple[str, str]:
    """(the minor of the build to run, a line that says why) for a container image."""

    def num(minor: str) -> tuple[int, int]:
        major, _, rest = minor.partition(".")
        return int(major), int(rest)

    newest = max(builds, key=num)
    wanted = image_minor(image)
    if wanted is None:
        return newest, f"image {image!r} names no Istio version: running the {newest} build"
    if wanted in builds:
        return wanted, f"image {image!r} is Istio {wanted}: running the {wanted} build"
    w, ordered = num(wanted), sorted(builds, key=num)
    if w > num(ordered[-1]) or w < num(ordered[0]):  # past either end: that end
        best = ordered[-1] if w > num(ordered[-1]) else ordered[0]
    else:  # between two builds: the nearer minor, the newer on a tie
        same = [m for m in ordered if num(m)[0] == w[0]] or ordered
        best = min(reversed(same), key=lambda m: abs(num(m)[1] - w[1]))
    return best, (
        f"image {image!r} is Istio {wanted}, which has no build here: "
        f"running the nearest, the {best} build"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    """The apiserver, with the runner's client certificate: requests and watches."""

    def __init__(self, server: str, ca: str, cert: str, key: str):
        u = urllib.parse.urlsplit(server)
        self.server, self.ca = server, ca
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 443
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)

    def _conn(self, timeout: float | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def request(
        self, method: str, path: str, body: Any = None, ctype: str = "application/json"
    ) -> tuple[int, Any]:
        conn = self._conn(15)
        try:
            headers = {"Accept": "application/json", "User-Agent": "testcluster-podrunner"}
            data = None
            if body is not None:
                data, headers["Content-Type"] = json.dumps(body).encode(), ctype
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def watch(self, path: str, rv: str):
        """Yield watch events until the server ends the stream."""
        conn = self._conn(330)
        try:
            sep = "&" if "?" in path else "?"
            conn.request(
                "GET",
                f"{path}{sep}watch=1&allowWatchBookmarks=true&timeoutSeconds=300"
                f"&resourceVersion={rv}",
                headers={"Accept": "application/json", "User-Agent": "testcluster-podrunner"},
            )
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"watch {path}: HTTP {resp.status}")
            for line in resp:
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


class Store:
    """List+watch caches of the kinds the runner reads; `changed` is set on every event."""

    KINDS: ClassVar[dict[str, str]] = {
        "pods": "/api/v1/pods",
        "services": "/api/v1/services",
        "configmaps": "/api/v1/configmaps",
        "secrets": "/api/v1/secrets",
    }

    def __init__(self, api: Api):
        self.api = api
        self.lock = threading.Lock()
        self.objs: dict[str, dict[tuple[str, str], dict]] = {k: {} for k in self.KINDS}
        self.synced = {k: threading.Event() for k in self.KINDS}
        self.changed = threading.Event()

    def start(self) -> None:
        for kind in self.KINDS:
            threading.Thread(target=self._informer, args=(kind,), daemon=True).start()

    def get(self, kind: str, ns: str, name: str) -> dict | None:
        with self.lock:
            return self.objs[kind].get((ns, name))

    def list(self, kind: str) -> list[dict]:
        with self.lock:
            return list(self.objs[kind].values())

    @staticmethod
    def _key(obj: dict) -> tuple[str, str]:
        m = obj["metadata"]
        return m.get("namespace", ""), m["name"]

    def _informer(self, kind: str) -> None:
        path = self.KINDS[kind]
        while True:
            try:
                code, body = self.api.request("GET", path)
                if code != 200:
                    raise RuntimeError(f"list {kind}: HTTP {code}")
                with self.lock:
                    self.objs[kind] = {self._key(o): o for o in body["items"]}
                rv = body["metadata"]["resourceVersion"]
                self.synced[kind].set()
                self.changed.set()
                while True:
                    for ev in self.api.watch(path, rv):
                        obj = ev["object"]
                        if ev["type"] == "ERROR":
                            raise RuntimeError(f"watch {kind}: {obj.get('message')}")
                        rv = obj["metadata"]["resourceVersion"]
                        if ev["type"] == "BOOKMARK":
                            continue
                        with self.lock:
                            if ev["type"] == "DELETED":
                                self.objs[kind].pop(self._key(obj), None)
                            else:
                                self.objs[kind][self._key(obj)] = obj
                        self.changed.set()
            except Exception as e:  # re-list: the stream ended, expired or broke
                log(f"{kind}: {e}; listing again")
                time.sleep(1)


class Runner:
    """One istiod Pod: its folder, volumes, process and readiness."""

    def __init__(self, owner: PodRunner, pod: dict):
        self.owner, self.api, self.store = owner, owner.api, owner.store
        m = pod["metadata"]
        self.ns, self.name, self.uid = m["namespace"], m["name"], m["uid"]
        self.pod = pod
        self.container = next(
            c for c in pod["spec"]["containers"] if (c.get("args") or [None])[0] == "discovery"
        )
        self.dir = owner.dir / "pods" / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = {p: _free_port() for p in ISTIOD_PORT_FLAGS}
        for p in self.container.get("ports") or []:
            self.ports.setdefault(int(p["containerPort"]), _free_port())
        self.ctrlz_port = _free_port()
        self.image = str(self.container.get("image") or "")
        self.minor, self.choice = choose_istiod(self.image, owner.istiods)
        self.binary = owner.istiods[self.minor]
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts, self.backoff, self.next_start = 0, 1.0, 0.0
        self.ready: bool | None = None
        self.tokens: dict[str, tuple[float, str]] = {}  # path -> (refresh at, token)
        self.waiting = ""
        cname = self.container["name"]
        self.cri_log = owner.dir / "logs" / "containers" / f"{self.ns}_{self.name}_{cname}.log"
        self.cri_log.parent.mkdir(parents=True, exist_ok=True)
        self.cri_log.touch()
        self.published = False  # the PortForward and Logs objects for kwok's kubelet server
        self.publish_error = ""
        self.stopped = threading.Event()
        threading.Thread(target=self._prober, daemon=True).start()

    # ------------------------------------------------------------------ volumes

    def _token(self, audience: str, seconds: int) -> tuple[float, str]:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        code, body = self.api.request(
            "POST",
            f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": [audience],
                    "expirationSeconds": seconds,
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name},
                },
            },
        )
        if code != 201:
            raise LookupError(f"token for ServiceAccount {self.ns}/{sa}: HTTP {code} {body}")
        return time.time() + seconds * 0.8, body["status"]["token"]

    def _cached_token(self, key: str, audience: str, seconds: int) -> str:
        at, tok = self.tokens.get(key, (0.0, ""))
        if time.time() >= at:
            at, tok = self._token(audience, seconds)
            self.tokens[key] = (at, tok)
        return tok

    def _source_files(self, kind: str, ref: dict, items: list | None) -> dict[str, bytes] | None:
        """The files of a ConfigMap or Secret; None when it is missing and not optional."""
        obj = self.store.get(kind, self.ns, ref["name"])
        if obj is None:
            if ref.get("optional"):
                return {}
            self.waiting = f"{kind[:-1]} {self.ns}/{ref['name']} not found"
            return None
        data: dict[str, bytes] = {}
        for k, v in (obj.get("data") or {}).items():
            data[k] = base64.b64decode(v) if kind == "secrets" else v.encode()
        for k, v in (obj.get("binaryData") or {}).items():
            data[k] = base64.b64decode(v)
        if items:
            return {i["path"]: data[i["key"]] for i in items if i["key"] in data}
        return data

    def _field(self, path: str) -> str:
        meta, spec, status = self.pod["metadata"], self.pod["spec"], self.pod.get("status") or {}
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
            "spec.nodeName": spec.get("nodeName") or "",
            "status.podIP": status.get("podIP") or "",
            "status.hostIP": status.get("hostIP") or "",
        }
        if path in simple:
            return simple[path]
        for part in ("labels", "annotations"):
            prefix = f"metadata.{part}['"
            if path.startswith(prefix) and path.endswith("']"):
                return (meta.get(part) or {}).get(path[len(prefix) : -2], "")
        if path in ("metadata.labels", "metadata.annotations"):
            kv = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(kv.items()))
        raise LookupError(f"fieldRef {path} is not supported by the test cluster")

    def _resource(self, ref: dict) -> str:
        res = self.container.get("resources") or {}
        section, _, name = ref["resource"].partition(".")
        value = (res.get(section) or {}).get(name)
        if value is None and name == "cpu":
            return "2"  # the node's cores, as the kubelet gives for no limit (capped here)
        if value is None:
            return str(256 * 1024**3)
        return str(_quantity_ceil(value, ref.get("divisor") or "1"))

    def _volume_files(self, vol: dict) -> dict[str, bytes] | None:
        if "configMap" in vol or "secret" in vol:
            kind = "configmaps" if "configMap" in vol else "secrets"
            ref = dict(vol.get("configMap") or vol["secret"])
            ref.setdefault("name", ref.get("secretName"))
            return self._source_files(kind, ref, ref.get("items"))
        if "projected" in vol:
            out: dict[str, bytes] = {}
            for src in vol["projected"].get("sources") or []:
                if "serviceAccountToken" in src:
                    t = src["serviceAccountToken"]
                    aud = t.get("audience") or SA_AUDIENCE
                    secs = int(t.get("expirationSeconds") or TOKEN_SECONDS)
                    key = f"{vol['name']}/{t['path']}"
                    out[t["path"]] = self._cached_token(key, aud, secs).encode()
                    continue
                for kind, key in (("configmaps", "configMap"), ("secrets", "secret")):
                    if key in src:
                        files = self._source_files(kind, src[key], src[key].get("items"))
                        if files is None:
                            return None
                        out.update(files)
                if "downwardAPI" in src:
                    out.update(self._downward(src["downwardAPI"]))
            return out
        if "downwardAPI" in vol:
            return self._downward(vol["downwardAPI"])
        if "emptyDir" in vol:
            return {}
        self.waiting = f"volume {vol['name']}: kind not supported by the test cluster"
        return None

    def _downward(self, spec: dict) -> dict[str, bytes]:
        out = {}
        for item in spec.get("items") or []:
            if "fieldRef" in item:
                out[item["path"]] = self._field(item["fieldRef"]["fieldPath"]).encode()
            elif "resourceFieldRef" in item:
                out[item["path"]] = self._resource(item["resourceFieldRef"]).encode()
        return out

    def _write_volume(self, target: Path, files: dict[str, bytes], empty_dir: bool) -> None:
        """Write like the kubelet: files in a timestamped folder, `..data` swapped atomically."""
        target.mkdir(parents=True, exist_ok=True)
        if empty_dir:
            return
        data_link = target / "..data"
        if data_link.is_symlink():
            current = target / os.readlink(data_link)
            same = {
                str(p.relative_to(current)): p.read_bytes()
                for p in current.rglob("*")
                if p.is_file()
            } == files
            if same:
                return
        stamp = target / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
        stamp.mkdir()
        for rel, content in files.items():
            f = stamp / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(content)
        tmp = target / "..data_tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(stamp.name)
        old = os.readlink(data_link) if data_link.is_symlink() else None
        os.replace(tmp, data_link)
        for top in {rel.split("/")[0] for rel in files}:
            link = target / top
            if not link.is_symlink():
                if link.exists():
                    shutil.rmtree(link) if link.is_dir() else link.unlink()
                link.symlink_to(f"..data/{top}")
        tops = {rel.split("/")[0] for rel in files}
        for p in target.iterdir():  # keys that went away
            if p.is_symlink() and not p.name.startswith("..") and p.name not in tops:
                p.unlink()
        if old:
            shutil.rmtree(target / old, ignore_errors=True)

    def sync_volumes(self) -> bool:
        """Bring every mounted volume up to date; False when one cannot be made yet."""
        vols = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        for mount in self.container.get("volumeMounts") or []:
            vol = vols.get(mount["name"])
            if vol is None:
                self.waiting = f"volumeMount {mount['name']} has no volume"
                return False
            try:
                files = self._volume_files(vol)
            except LookupError as e:
                self.waiting = str(e)
                return False
            if files is None:
                return False
            target = self.dir / mount["mountPath"].lstrip("/")
            self._write_volume(target, files, "emptyDir" in vol)
        return True

    # ------------------------------------------------------------------ kubelet server

    def kubelet_objects(self) -> list[dict]:
        """kwok's PortForward and Logs for this Pod: what `kubectl port-forward` and
        `kubectl logs` reach through the kubelet server (kwok's) on the node."""
        meta = {
            "name": self.name,
            "namespace": self.ns,
            "labels": {"app.kubernetes.io/managed-by": "testcluster-podrunner"},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}
            ],
        }
        ports = {**self.ports, CTRLZ_PORT: self.ctrlz_port}
        forwards = [
            {"ports": [cport], "target": {"address": "127.0.0.1", "port": lport}}
            for cport, lport in sorted(ports.items())
        ]
        previous = self.cri_log.with_suffix(".previous.log")
        logs = [
            {
                "containers": [self.container["name"]],
                "logsFile": str(self.cri_log),
                "previousLogsFile": str(previous),
            }
        ]
        api = KWOK_API.removeprefix("/apis/")
        return [
            {"apiVersion": api, "kind": "PortForward", "metadata": meta,
             "spec": {"forwards": forwards}},
            {"apiVersion": api, "kind": "Logs", "metadata": meta, "spec": {"logs": logs}},
        ]  # fmt: skip

    def publish(self) -> None:
        """Write (server-side apply) the kubelet server's objects for this Pod, once."""
        if self.published:
            return
        for obj in self.kubelet_objects():
            plural = {"PortForward": "portforwards", "Logs": "logs"}[obj["kind"]]
            try:
                code, body = self.api.request(
                    "PATCH",
                    f"{KWOK_API}/namespaces/{self.ns}/{plural}/{self.name}"
                    "?fieldManager=testcluster-podrunner&force=true",
                    obj,
                    ctype="application/apply-patch+yaml",
                )
                why = "" if code in (200, 201) else f"HTTP {code} {_message(body)}"
            except OSError as e:
                why = f"{type(e).__name__}: {e}"
            if why:  # istiod runs regardless; tried again on the next tick
                if why != self.publish_error:
                    log(f"{self.ns}/{self.name}: kwok {obj['kind']}: {why}")
                self.publish_error = why
                return
        self.published = True

    # ------------------------------------------------------------------ process

    def _env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir)}
        for e in self.container.get("env") or []:
            if "value" in e:
                env[e["name"]] = str(e["value"])
                continue
            src = e.get("valueFrom") or {}
            if "fieldRef" in src:
                env[e["name"]] = self._field(src["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in src:
                env[e["name"]] = self._resource(src["resourceFieldRef"])
            elif "configMapKeyRef" in src or "secretKeyRef" in src:
                kind = "configmaps" if "configMapKeyRef" in src else "secrets"
                ref = src.get("configMapKeyRef") or src["secretKeyRef"]
                files = self._source_files(kind, {**ref, "optional": True}, None) or {}
                if ref["key"] in files:
                    env[e["name"]] = files[ref["key"]].decode()
                elif not ref.get("optional"):
                    raise LookupError(f"env {e['name']}: {kind[:-1]} key {ref['key']} not found")
        return env

    def _kubeconfig(self) -> Path:
        token = self._cached_token("kubeconfig", SA_AUDIENCE, TOKEN_SECONDS)
        ca = base64.b64encode(Path(self.api.ca).read_bytes()).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "c",
                    "cluster": {"server": self.api.server, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": "pod", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "pod"}}],
            "current-context": "c",
        }
        path = self.dir / "kubeconfig.d" / "kubeconfig"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg))
        os.replace(tmp, path)
        return path

    def tick(self) -> None:
        """Called on every change and once a second: keep volumes current, keep istiod running."""
        self.publish()
        if not self.sync_volumes():
            return
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            code = self.proc.returncode
            self.proc = None
            self.restarts += 1
            self.next_start = time.monotonic() + self.backoff
            log(f"{self.ns}/{self.name}: istiod exited with {code}, restart in {self.backoff:.0f}s")
            self.backoff = min(self.backoff * 2, 30)
            self.set_ready(False)
        if time.monotonic() < self.next_start:
            return
        try:
            env = self._env()
            kubeconfig = self._kubeconfig()
        except LookupError as e:
            self.waiting = str(e)
            return
        args = list(self.container["args"])
        args += [f"{flag}=127.0.0.1:{self.ports[p]}" for p, flag in ISTIOD_PORT_FLAGS.items()]
        args += [
            f"--kubeconfig={kubeconfig}",
            "--ctrlz_address=127.0.0.1",
            f"--ctrlz_port={self.ctrlz_port}",
        ]
        logs = self.owner.dir / "logs"
        logs.mkdir(exist_ok=True)
        raw = open(logs / f"pod-{self.ns}-{self.name}.log", "ab")  # noqa: SIM115 (the pump's)
        raw.write(f"podrunner: {self.choice} ({self.binary})\n".encode())
        raw.flush()
        if self.cri_log.stat().st_size:  # the run before: `kubectl logs --previous`
            os.replace(self.cri_log, self.cri_log.with_suffix(".previous.log"))
        cri = open(self.cri_log, "ab")  # noqa: SIM115 (the pump's)
        self.proc = subprocess.Popen(
            [str(self.binary), *args],
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )  # in podrunner's process group: stopping the cluster stops it too
        assert self.proc.stdout is not None
        threading.Thread(target=_pump, args=(self.proc.stdout, raw, cri), daemon=True).start()
        self.waiting = ""
        log(f"{self.ns}/{self.name}: istiod {self.minor} started (pid {self.proc.pid})")

    def stop(self) -> None:
        self.stopped.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)  # a Pod's grace period, short: its clients are tests
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
        log(f"{self.ns}/{self.name}: stopped")

    # ------------------------------------------------------------------ readiness

    def _probe_once(self, probe: dict) -> bool:
        get = probe.get("httpGet")
        if get is None or self.proc is None or self.proc.poll() is not None:
            return False
        port = get["port"]
        if isinstance(port, str):
            named = {p.get("name"): p["containerPort"] for p in self.container.get("ports") or []}
            port = named.get(port, 0)
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.ports.get(int(port), 0), timeout=probe.get("timeoutSeconds", 1)
        )
        try:
            conn.request("GET", get.get("path") or "/")
            return 200 <= conn.getresponse().status < 400
        except OSError:
            return False
        finally:
            conn.close()

    def _prober(self) -> None:
        probe = self.container.get("readinessProbe")
        if probe is None:
            return
        period = max(1.0, min(float(probe.get("periodSeconds", 3)), 3.0))
        while not self.stopped.wait(0.5 if not self.ready else period):
            with contextlib.suppress(Exception):
                self.set_ready(self._probe_once(probe))

    def set_ready(self, ready: bool) -> None:
        if ready == self.ready or self.stopped.is_set():
            return
        status = "True" if ready else "False"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        live = self.store.get("pods", self.ns, self.name) or self.pod
        # containerStatuses is replaced as a whole by a patch: write every entry complete
        statuses = []
        for c in self.pod["spec"]["containers"]:
            old = next(
                (x for x in (live.get("status") or {}).get("containerStatuses") or []
                 if x.get("name") == c["name"]),
                {},
            )  # fmt: skip
            entry = {
                "name": c["name"],
                "image": old.get("image") or c.get("image", ""),
                "imageID": old.get("imageID", ""),
                "started": True,
                "state": old.get("state") or {"running": {"startedAt": now}},
                "ready": old.get("ready", True),
                "restartCount": old.get("restartCount", 0),
            }
            if c["name"] == self.container["name"]:
                entry["ready"], entry["restartCount"] = ready, self.restarts
            statuses.append(entry)
        patch = {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": status, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
                ],
                "containerStatuses": statuses,
            }
        }
        code, body = self.api.request(
            "PATCH",
            f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status",
            patch,
            ctype="application/strategic-merge-patch+json",
        )
        if code == 200:
            self.ready = ready
            log(f"{self.ns}/{self.name}: Ready={status}")
            self.owner.write_state()
        else:
            log(f"{self.ns}/{self.name}: status patch: HTTP {code} {body}")


def _message(body: Any) -> str:
    return str(body.get("message") if isinstance(body, dict) else body)


def cri_line(line: bytes, now_ns: int) -> bytes:
    """One line of output in the CRI log format the kubelet writes (and kwok reads):
    `<RFC 3339 time, nanoseconds> stdout F <line>`."""
    secs, nanos = divmod(now_ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{nanos:09d}Z"
    return f"{stamp} stdout F ".encode() + line.rstrip(b"\r\n") + b"\n"


def _pump(src: Any, raw: Any, cri: Any) -> None:
    """Copy istiod's output to its log as it is (`logs/pod-NS-NAME.log`) and in the CRI
    format (`logs/containers/...`), line by line, until it exits."""
    try:
        for line in iter(src.readline, b""):
            raw.write(line)
            raw.flush()
            cri.write(cri_line(line, time.time_ns()))
            cri.flush()
    finally:
        src.close()
        raw.close()
        cri.close()


def _die_with_parent() -> None:
    """In the child: SIGKILL when podrunner dies, even by SIGKILL (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(ctypes.c_int(1), ctypes.c_ulong(signal.SIGKILL), *[ctypes.c_ulong(0)] * 3)


def _quantity_ceil(value: str, divisor: str) -> int:
    """ceil(value / divisor) for the Kubernetes quantities the downward API hands out."""
    from decimal import ROUND_CEILING, Decimal

    suffixes = {
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
        "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": Decimal("0.001"),
    }  # fmt: skip

    def parse(q: str) -> Decimal:
        for s, f in suffixes.items():
            if q.endswith(s):
                return Decimal(q[: -len(s)]) * Decimal(f)
        return Decimal(q)

    return max(1, int((parse(str(value)) / parse(str(divisor))).to_integral_value(ROUND_CEILING)))


class PodRunner:
    def __init__(
        self, d: Path, api: Api, istiods: dict[str, Path], node: str, kubelet: str | None = None
    ):
        if not istiods:
            raise ValueError("no istiod build given")
        self.dir, self.api, self.istiods, self.node = d, api, istiods, node
        self.kubelet = kubelet  # the node's kubelet endpoint, HOST:PORT, served on loopback
        self.store = Store(api)
        self.runners: dict[str, Runner] = {}
        self.lock = threading.Lock()
        self.state_lock = threading.Lock()

    def write_state(self) -> None:
        state = {
            r.uid: {
                "namespace": r.ns,
                "name": r.name,
                "dir": str(r.dir),
                "ports": {str(k): v for k, v in r.ports.items()},
                "pid": r.proc.pid if r.proc else None,
                "ready": bool(r.ready),
                "restarts": r.restarts,
                "waiting": r.waiting,
                "istiod": {
                    "image": r.image,
                    "image_minor": image_minor(r.image),
                    "minor": r.minor,
                    "binary": str(r.binary),
                    "why": r.choice,
                },
            }
            for r in list(self.runners.values())
        }
        with self.state_lock:  # the reconcile loop and the probers both write it
            tmp = self.dir / "pods.json.tmp"
            tmp.write_text(json.dumps(state, indent=2) + "\n")
            os.replace(tmp, self.dir / "pods.json")

    def reconcile(self) -> None:
        wanted = {}
        for pod in self.store.list("pods"):
            meta, spec = pod["metadata"], pod.get("spec") or {}
            if spec.get("nodeName") != self.node or meta.get("deletionTimestamp"):
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if runs_istiod(pod):
                wanted[meta["uid"]] = pod
        with self.lock:
            for uid in [u for u in self.runners if u not in wanted]:
                self.runners.pop(uid).stop()
            for uid, pod in wanted.items():
                r = self.runners.get(uid)
                if r is None:
                    r = self.runners[uid] = Runner(self, pod)
                r.pod = pod
                try:
                    r.tick()
                except Exception as e:  # keep the others running
                    r.waiting = f"{type(e).__name__}: {e}"
                    log(f"{r.ns}/{r.name}: {r.waiting}")
        self.write_state()

    def run(self, stop: threading.Event) -> None:
        self.store.start()
        for ev in self.store.synced.values():
            ev.wait()
        while not stop.is_set():
            self.store.changed.wait(1)
            self.store.changed.clear()
            try:
                self.reconcile()
            except Exception as e:  # never let one bad pass stop every istiod's kubelet
                log(f"reconcile: {type(e).__name__}: {e}")
        with self.lock:
            for r in self.runners.values():
                r.stop()
            self.runners.clear()
        self.write_state()

    # ------------------------------------------------------------------ egress

    def resolve(self, target: str) -> tuple[int | None, str]:
        """A CONNECT target (Service name or ClusterIP, and port; or the node's kubelet
        endpoint) -> a loopback port, or why not."""
        host, _, port_text = target.rpartition(":")
        host = host.strip("[]")
        try:
            port = int(port_text)
        except ValueError:
            return None, f"bad CONNECT target {target!r}"
        if self.kubelet is not None and target == self.kubelet:
            return port, ""  # kwok's kubelet server listens there, on loopback
        svc = None
        for s in self.store.list("services"):
            m = s["metadata"]
            names = {
                f"{m['name']}.{m['namespace']}.svc",
                f"{m['name']}.{m['namespace']}.svc.cluster.local",
            }
            if host in names or host in ((s.get("spec") or {}).get("clusterIPs") or []):
                svc = s
                break
        if svc is None:
            pod = next(
                (
                    p
                    for p in self.store.list("pods")
                    if (p.get("status") or {}).get("podIP") == host
                ),
                None,
            )
            if pod is not None:  # the service proxy dials an endpoint's Pod address
                m = pod["metadata"]
                return None, (
                    f"Pod address {host} ({m['namespace']}/{m['name']}) leads nowhere in the "
                    "test cluster: only Services and the kubelet are reached"
                )
            return None, f"no Service for {host}"
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        sport = next((p for p in svc["spec"].get("ports") or [] if p.get("port") == port), None)
        if sport is None:
            return None, f"Service {ns}/{name} has no port {port}"
        selector = svc["spec"].get("selector") or {}
        with self.lock:
            runners = list(self.runners.values())
        for r in runners:
            labels = r.pod["metadata"].get("labels") or {}
            if r.ns != ns or not selector or any(labels.get(k) != v for k, v in selector.items()):
                continue
            if not r.ready:
                continue
            target_port = sport.get("targetPort", port)
            if isinstance(target_port, str):
                named = {p.get("name"): p["containerPort"] for p in r.container.get("ports") or []}
                target_port = named.get(target_port, 0)
            if int(target_port) in r.ports:
                return r.ports[int(target_port)], ""
        return None, f"no ready endpoint for Service {ns}/{name} port {port}"


class _EgressHandler(socketserver.StreamRequestHandler):
    server: _EgressServer

    def handle(self) -> None:
        line = self.rfile.readline(8192).decode("latin-1").strip()
        while self.rfile.readline(8192).strip():
            pass  # headers
        parts = line.split()
        if len(parts) != 3 or parts[0] != "CONNECT":
            self._refuse(405, f"only CONNECT is served, not {line!r}")
            return
        port, why = self.server.runner.resolve(parts[1])
        if port is None:
            self._refuse(503, why)
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError as e:
            self._refuse(503, f"{parts[1]}: {e}")
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        upstream.settimeout(None)
        self.connection.settimeout(None)
        _pipe(self.connection, upstream)

    def _refuse(self, code: int, why: str) -> None:
        """The reason goes in the status line too: the apiserver's error quotes only that."""
        body = why.encode()
        reason = why.replace("\r", " ").replace("\n", " ")
        self.wfile.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )


def _pipe(a: socket.socket, b: socket.socket) -> None:
    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=copy, args=(b, a), daemon=True)
    t.start()
    copy(a, b)
    t.join()
    b.close()


class _EgressServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, runner: PodRunner):
        self.runner = runner
        super().__init__(path, _EgressHandler)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--server", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument(
        "--istiod",
        action="append",
        required=True,
        metavar="MINOR=PATH",
        help="the pilot-discovery built for an Istio minor (repeat for each minor)",
    )
    ap.add_argument("--node", required=True)
    ap.add_argument(
        "--kubelet",
        metavar="HOST:PORT",
        help="the node's kubelet endpoint (kwok's server, on loopback): CONNECTs to it pass",
    )
    a = ap.parse_args(argv)
    if a.kubelet and a.kubelet.rpartition(":")[0] not in ("127.0.0.1", "localhost"):
        ap.error(f"--kubelet {a.kubelet!r}: only a loopback address may be dialed")
    istiods = {}
    for item in a.istiod:
        minor, eq, path = item.partition("=")
        if not eq or image_minor(f"x:{minor}") != minor:
            ap.error(f"--istiod {item!r}: expected MINOR=PATH, e.g. 1.31=/path/pilot-discovery")
        istiods[minor] = Path(path)
    runner = PodRunner(
        a.dir.resolve(), Api(a.server, a.ca, a.cert, a.key), istiods, a.node, a.kubelet
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sock = a.dir / "egress.sock"
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    egress = _EgressServer(str(sock), runner)
    threading.Thread(target=egress.serve_forever, daemon=True).start()
    builds = ", ".join(f"{m}: {p}" for m, p in sorted(istiods.items()))
    log(f"egress proxy on {sock}; istiod builds {builds}")
    runner.run(stop)
    egress.shutdown()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
