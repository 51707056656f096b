"""The lock Lease against the test cluster: a run that loses it (taken by another run, or
left unrenewed) writes nothing more; expiry is judged by watching the Lease, not by
comparing clocks; a create whose answer was lost is recognised; the release is
conditional; a waiting run says who holds the lock; two runs take turns."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_install_cluster import CHARTS, kymamesh

from kymamesh.adapters import lock as adapter
from kymamesh.adapters.cluster import Cluster, Ref
from kymamesh.errors import ExitCode, LockHeldError, LockLostError

ROOT = Path(__file__).resolve().parent.parent
JSON_Y = ("-y", "-o", "json")
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


def stamp(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(c: Any, ns: str) -> dict[str, Any] | None:
    code, body = c.api().get(f"{LEASES.format(ns=ns)}/{adapter.LOCK_NAME}")
    return body if code == 200 else None


def put_lease(c: Any, ns: str, holder: str, renew: str, duration: int, rv: str = "") -> str:
    """Create (or, with rv, update) the lock Lease as another run would; its resourceVersion."""
    body: dict[str, Any] = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": adapter.LOCK_NAME, "namespace": ns},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": renew,
            "renewTime": renew,
        },
    }
    if rv:
        body["metadata"]["resourceVersion"] = rv
        code, out = c.api().request(
            "PUT", f"{LEASES.format(ns=ns)}/{adapter.LOCK_NAME}", body=body, user_agent="thief"
        )
    else:
        code, out = c.api().request("POST", LEASES.format(ns=ns), body=body, user_agent="thief")
    assert code in (200, 201), (code, out)
    return str(out["metadata"]["resourceVersion"])


@pytest.fixture
def adapter_for(cluster: Any) -> Iterator[Any]:
    made: list[Cluster] = []

    def make() -> Cluster:
        cl = Cluster.connect(str(cluster.kubeconfig))
        made.append(cl)
        return cl

    yield make
    for cl in made:
        cl.close()


@pytest.fixture
def fast_renewal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "LOCK_RENEW_EVERY_S", 0.3)
    monkeypatch.setattr(adapter, "LOCK_RETRY_EVERY_S", 0.3)


def wait_until_lost(cluster: Any, cl: Cluster) -> LockLostError:
    def lost() -> LockLostError | None:
        try:
            cl.check_lock()
        except LockLostError as exc:
            return exc
        return None

    found = cluster.wait_for(lost, timeout=60, what="the run to notice it lost its lock")
    assert isinstance(found, LockLostError)
    return found


def every_write(cl: Cluster, ns: str) -> dict[str, Any]:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fenced", "namespace": ns}}
    ref = Ref.of(cm)
    return {
        "apply": lambda: cl.apply(cm),
        "create": lambda: cl.create(cm),
        "replace": lambda: cl.replace(cm),
        "merge_patch": lambda: cl.merge_patch(ref, {"data": {"a": "b"}}),
        "delete": lambda: cl.delete(ref),
        "ensure_namespace": lambda: cl.ensure_namespace(f"{ns}-not-made"),
    }


@pytest.mark.usefixtures("fast_renewal")
def test_stolen_lock_stops_every_write_and_is_not_released(
    cluster: Any, namespace: str, adapter_for: Any
) -> None:
    cl = adapter_for()
    with cl.lock(namespace, wait=5) as holder:
        cl.check_lock()  # held: writes may go on
        live = lease(cluster, namespace)
        assert live is not None and live["spec"]["holderIdentity"] == holder
        put_lease(
            cluster, namespace, "other-run", stamp(), 30, rv=live["metadata"]["resourceVersion"]
        )
        lost = wait_until_lost(cluster, cl)
        assert lost.exit_code == ExitCode.LOCK_LOST
        assert "other-run" in lost.message
        with cluster.audit.counting() as writes:
            for name, write in every_write(cl, namespace).items():
                with pytest.raises(LockLostError):
                    write()
                assert (
                    cluster.kubectl("get", "cm", "fenced", "-n", namespace, check=False).returncode
                    != 0
                ), name
        assert writes.total == 0, writes.describe()
    after = lease(cluster, namespace)
    assert after is not None and after["spec"]["holderIdentity"] == "other-run"


@pytest.mark.usefixtures("fast_renewal")
def test_unrenewable_lock_counts_as_lost_before_it_could_expire(
    cluster: Any, namespace: str, adapter_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib3.exceptions import ProtocolError

    monkeypatch.setattr(adapter, "LOCK_RENEW_DEADLINE_S", 2.0)
    cl = adapter_for()
    with cl.lock(namespace, wait=5):
        real = cl._dynamic.replace

        def unreachable(resource: Any, *args: Any, **kwargs: Any) -> Any:
            if resource.kind == "Lease":
                raise ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
            return real(resource, *args, **kwargs)

        monkeypatch.setattr(cl._dynamic, "replace", unreachable)
        lost = wait_until_lost(cluster, cl)
        assert "could not be renewed" in lost.message
        with cluster.audit.counting() as writes, pytest.raises(LockLostError):
            cl.apply(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "x", "namespace": namespace},
                }
            )
        assert writes.total == 0, writes.describe()


def test_lease_renewed_by_a_host_whose_clock_lags_is_not_taken(
    cluster: Any, namespace: str, adapter_for: Any
) -> None:
    # Its renewTime is an hour old by our clock, but it keeps being renewed.
    rv = put_lease(cluster, namespace, "lagging-host", stamp(timedelta(hours=-1)), 4)
    stop = threading.Event()

    def renew() -> None:
        version = rv
        while not stop.wait(0.5):
            version = put_lease(
                cluster, namespace, "lagging-host", stamp(timedelta(hours=-1)), 4, rv=version
            )

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        cl = adapter_for()
        with pytest.raises(LockHeldError) as held, cl.lock(namespace, wait=10):
            pass
    finally:
        stop.set()
        renewer.join()
    assert "lagging-host" in held.value.message
    assert lease(cluster, namespace)["spec"]["holderIdentity"] == "lagging-host"  # type: ignore[index]


def test_unrenewed_lease_stamped_in_the_future_is_taken_over(
    cluster: Any, namespace: str, adapter_for: Any
) -> None:
    # A crashed run on a host whose clock runs an hour ahead: unchanged for its 3 s, it is free.
    put_lease(cluster, namespace, "fast-clock-host", stamp(timedelta(hours=1)), 3)
    lines: list[str] = []
    cl = adapter_for()
    with cl.lock(namespace, wait=30, on_wait=lines.append) as holder:
        assert lease(cluster, namespace)["spec"]["holderIdentity"] == holder  # type: ignore[index]
    assert len(lines) == 1, lines  # said who holds it and when it expires (by this host's clock)
    assert "fast-clock-host" in lines[0] and "expires in 3s" in lines[0]
    assert lease(cluster, namespace) is None  # released


def test_create_whose_answer_was_lost_is_recognised(
    cluster: Any, namespace: str, adapter_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib3.exceptions import ProtocolError

    cl = adapter_for()
    real = cl._dynamic.create
    lost: list[str] = []

    def create_then_lose_answer(resource: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(resource, *args, **kwargs)
        if resource.kind == "Lease" and not lost:
            lost.append("answer")
            raise ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        return result

    monkeypatch.setattr(cl._dynamic, "create", create_then_lose_answer)
    lines: list[str] = []
    with cl.lock(namespace, wait=5, on_wait=lines.append) as holder:
        assert lease(cluster, namespace)["spec"]["holderIdentity"] == holder  # type: ignore[index]
        cl.check_lock()
    assert lost == ["answer"]
    assert lines == []  # it never waited on itself


def test_release_after_the_lock_was_taken_over_leaves_the_new_holder(
    cluster: Any, namespace: str, adapter_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No renewal happens in this test: the other run takes the Lease right after ours.
    monkeypatch.setattr(adapter, "LOCK_RENEW_EVERY_S", 3600.0)
    cl = adapter_for()
    with cl.lock(namespace, wait=5):
        live = lease(cluster, namespace)
        assert live is not None
        put_lease(
            cluster, namespace, "next-run", stamp(), 30, rv=live["metadata"]["resourceVersion"]
        )
    after = lease(cluster, namespace)
    assert after is not None and after["spec"]["holderIdentity"] == "next-run"


def test_two_runs_take_turns(cluster: Any, namespace: str, adapter_for: Any) -> None:
    first, second = adapter_for(), adapter_for()
    order: list[str] = []
    lines: list[str] = []
    with first.lock(namespace, wait=5) as holder:
        waiting = threading.Thread(
            target=lambda: _hold_briefly(second, namespace, order, lines), daemon=True
        )
        waiting.start()
        cluster.wait_for(lambda: lines, timeout=30, what="the second run to wait")
        order.append("first done")
    waiting.join(timeout=60)
    assert order == ["first done", "second has it"]
    assert len(lines) == 1 and holder in lines[0]


def _hold_briefly(cl: Cluster, ns: str, order: list[str], lines: list[str]) -> None:
    with cl.lock(ns, wait=60, on_wait=lines.append):
        order.append("second has it")


def _cut(*_: Any) -> Exception:
    from urllib3.exceptions import ProtocolError

    return ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))


@pytest.mark.usefixtures("fast_renewal")
def test_a_retried_write_checks_the_lock_before_each_attempt(
    cluster: Any, namespace: str, adapter_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first attempt is cut short; by then another run has taken the lock over. The
    # adapter retries transient faults, but the retry is a write too: it must not be made.
    cl = adapter_for()
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "late", "namespace": namespace},
    }
    attempts: list[str] = []
    with cl.lock(namespace, wait=5):
        real = cl._dynamic.server_side_apply

        def cut_short_meanwhile_taken(resource: Any, *args: Any, **kwargs: Any) -> Any:
            attempts.append(resource.kind)
            if len(attempts) == 1:
                live = lease(cluster, namespace)
                assert live is not None
                put_lease(
                    cluster,
                    namespace,
                    "other-run",
                    stamp(),
                    30,
                    live["metadata"]["resourceVersion"],
                )
                wait_until_lost(cluster, cl)
                raise _cut()
            return real(resource, *args, **kwargs)

        monkeypatch.setattr(cl._dynamic, "server_side_apply", cut_short_meanwhile_taken)
        with (
            cluster.audit.counting(user_agent_prefix="kymamesh/") as writes,
            pytest.raises(LockLostError),
        ):
            cl.apply(cm)
        assert attempts == ["ConfigMap"]  # no second attempt
        made = [e for e in writes.events if e["objectRef"]["resource"] != "leases"]
        assert made == [], writes.describe()  # (the Lease: the renewal that found it taken)
    assert cluster.kubectl("get", "cm", "late", "-n", namespace, check=False).returncode != 0


def test_a_renewal_makes_one_attempt_per_tick(
    cluster: Any, namespace: str, adapter_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The API refuses every renewal: each tick makes one attempt, the next comes a
    # LOCK_RETRY_EVERY_S later, and the deadline is met on time (no retries inside a tick
    # that could run past it).
    monkeypatch.setattr(adapter, "LOCK_RENEW_EVERY_S", 0.3)
    monkeypatch.setattr(adapter, "LOCK_RETRY_EVERY_S", 0.5)
    monkeypatch.setattr(adapter, "LOCK_RENEW_DEADLINE_S", 2.5)
    cl = adapter_for()
    tries: list[float] = []
    with cl.lock(namespace, wait=5):
        real = cl._dynamic.replace

        def unreachable(resource: Any, *args: Any, **kwargs: Any) -> Any:
            if resource.kind == "Lease":
                tries.append(time.monotonic())
                raise _cut()
            return real(resource, *args, **kwargs)

        monkeypatch.setattr(cl._dynamic, "replace", unreachable)
        wait_until_lost(cluster, cl)
        monkeypatch.undo()
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert len(tries) >= 3 and min(gaps) >= 0.45, gaps


@pytest.mark.usefixtures("fast_renewal")
def test_a_renewal_whose_answer_was_lost_is_recognised_on_the_next_tick(
    cluster: Any, namespace: str, adapter_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cl = adapter_for()
    lost: list[str] = []
    with cl.lock(namespace, wait=5) as holder:
        real = cl._dynamic.replace

        def renew_then_lose_answer(resource: Any, *args: Any, **kwargs: Any) -> Any:
            result = real(resource, *args, **kwargs)
            if resource.kind == "Lease" and not lost:
                lost.append("answer")
                raise _cut()
            return result

        monkeypatch.setattr(cl._dynamic, "replace", renew_then_lose_answer)
        cluster.wait_for(lambda: len(lost) == 1, timeout=30, what="a renewal to lose its answer")
        time.sleep(1.5)  # several more ticks
        cl.check_lock()  # still held
        assert lease(cluster, namespace)["spec"]["holderIdentity"] == holder  # type: ignore[index]
    assert lease(cluster, namespace) is None  # released


@pytest.mark.usefixtures("fast_renewal")
def test_a_run_whose_renewals_overran_releases_its_lease(
    cluster: Any, namespace: str, adapter_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renewals fail until the run counts its lock as lost; the Lease still names this run,
    # so at the end it is released and the next run does not wait for it to expire.
    monkeypatch.setattr(adapter, "LOCK_RENEW_DEADLINE_S", 1.5)
    cl = adapter_for()
    with cl.lock(namespace, wait=5) as holder:
        real = cl._dynamic.replace

        def unreachable(resource: Any, *args: Any, **kwargs: Any) -> Any:
            if resource.kind == "Lease":
                raise _cut()
            return real(resource, *args, **kwargs)

        monkeypatch.setattr(cl._dynamic, "replace", unreachable)
        assert "could not be renewed" in wait_until_lost(cluster, cl).message
        assert lease(cluster, namespace)["spec"]["holderIdentity"] == holder  # type: ignore[index]
        monkeypatch.setattr(cl._dynamic, "replace", real)
    assert lease(cluster, namespace) is None
    started = time.monotonic()
    with adapter_for().lock(namespace, wait=5):
        pass
    assert time.monotonic() - started < 3


def test_a_waiting_run_says_so_while_it_waits(
    cluster: Any, namespace: str, adapter_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter, "LOCK_TELL_EVERY_S", 0.5)
    rv = put_lease(cluster, namespace, "busy-run", stamp(), 30)
    stop = threading.Event()

    def renew() -> None:
        version = rv
        while not stop.wait(0.5):
            version = put_lease(cluster, namespace, "busy-run", stamp(), 30, rv=version)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    lines: list[str] = []
    try:
        with pytest.raises(LockHeldError), adapter_for().lock(namespace, 3, lines.append):
            pass
    finally:
        stop.set()
        renewer.join()
    assert len(lines) >= 3, lines  # at the start, then every LOCK_TELL_EVERY_S
    for line in lines:
        assert "busy-run" in line and re.search(r"expires in \d+s", line), line
    assert "waiting at most 3s" in lines[0]
    assert re.search(r"waited \ds of 3s", lines[-1]), lines[-1]


# -- through the command line -------------------------------------------------------------------

# Runs the real CLI; after its first Helm upgrade, another run takes the lock Lease, and
# this one goes on only once it has noticed.
THIEF = """
import sys, time
from kymamesh.adapters import cluster as c
from kymamesh.adapters import helm as h
from kymamesh.adapters import lock
from kymamesh.errors import LockLostError

lock.LOCK_RENEW_EVERY_S = 0.3
made = []
init = c.Cluster.__init__
def remember(self, *a, **k):
    init(self, *a, **k)
    made.append(self)
c.Cluster.__init__ = remember

upgrade = h.Helm.install_or_upgrade
def then_steal(self, release, *a, **k):
    upgrade(self, release, *a, **k)
    cl = made[0]
    ref = c.Ref("coordination.k8s.io/v1", "Lease", lock.LOCK_NAME, "istio-system")
    live = cl.get(ref)
    live["spec"]["holderIdentity"] = "other-run"
    cl.replace(live)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            cl.check_lock()
        except LockLostError:
            return
        time.sleep(0.1)
h.Helm.install_or_upgrade = then_steal

sys.argv = ["kymamesh", *sys.argv[1:]]
from kymamesh.cli.app import main
main()
"""


def test_cli_run_that_lost_its_lock_stops_with_its_exit_code(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    run = subprocess.run(
        [sys.executable, "-c", THIEF, "install", "--charts-dir", str(CHARTS), "-y", "-o", "json"],
        cwd=ROOT,
        env=c.env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    doc = json.loads(run.stdout)
    assert run.returncode == ExitCode.LOCK_LOST, run.stderr
    assert doc["exitCode"] == 8 and doc["errors"][0]["code"] == "lock-lost"
    assert doc["errors"][0]["hint"]
    releases = json.loads(c.helm_run("list", "-n", "istio-system", "-o", "json").stdout)
    assert [r["name"] for r in releases] == ["istio-base"]  # istiod was not written
    left = lease(c, "istio-system")
    assert left is not None and left["spec"]["holderIdentity"] == "other-run"
    # once the other run is done, a re-run converges
    c.kubectl("delete", "lease", adapter.LOCK_NAME, "-n", "istio-system")
    code, doc, err = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert code == 0, (doc["errors"], err)


def test_a_run_with_nothing_to_change_checks_again_after_a_run_that_holds_the_lock(
    fresh_cluster: Any,
) -> None:
    # `uninstall` followed at once by `install`: install found everything in place while
    # uninstall, holding the lock, was removing it. A run with nothing to change reads the
    # Lease once; held by another run, it waits for it and checks again under the lock.
    c = fresh_cluster()
    code, doc, err = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert code == 0, (doc["errors"], err)
    other = Cluster.connect(str(c.kubeconfig))
    lines: list[str] = []
    try:
        with other.lock("istio-system", wait=30):
            run = subprocess.Popen(
                [sys.executable, "-m", "kymamesh", "install", "--charts-dir", str(CHARTS), *JSON_Y],
                cwd=ROOT,
                env=c.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            reader = threading.Thread(target=lambda: lines.extend(run.stderr or []), daemon=True)
            reader.start()
            c.wait_for(
                lambda: (
                    any("waiting for the lock" in line for line in lines) or run.poll() is not None
                ),
                timeout=120,
                what="the converged install to wait for the lock",
            )
            # the other run, meanwhile: takes the gateway away
            c.helm_run("uninstall", "istio-ingressgateway", "-n", "istio-system")
        out, _ = run.communicate(timeout=600)
        reader.join(timeout=10)
    finally:
        other.close()
    doc = json.loads(out)
    assert run.returncode == 0, (doc["errors"], "".join(lines))
    assert doc["changed"] is True
    assert any("another kymamesh run" in note for note in doc["notes"]), doc["notes"]
    releases = json.loads(c.helm_run("list", "-n", "istio-system", "-o", "json").stdout)
    assert "istio-ingressgateway" in [r["name"] for r in releases]


def test_a_converged_run_reads_the_lease_and_writes_nothing(cluster: Any) -> None:
    from tests.support_patch import ensure_istio

    ensure_istio(cluster)
    with cluster.audit.counting(user_agent_prefix="kymamesh/") as writes:
        code, doc, err = kymamesh(cluster, "install", "--charts-dir", str(CHARTS), "-y")
    assert code == 0, (doc["errors"], err)
    assert doc["changed"] is False, doc
    assert writes.total == 0, writes.describe()
