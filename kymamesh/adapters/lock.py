"""The lock: one kymamesh run at a time per cluster, by a Lease held while writing.

`LeaseLock.hold` takes the Lease `kymamesh-lock` (waiting while another run holds
it), renews it in the background and releases it at the end; `LeaseLock.check` is
the fence every write calls first: it raises LockLostError once the run no longer
holds the lock. The Lease itself is read and written through a `LeaseApi` (the
cluster adapter, the one place that speaks to the API); this module is the logic
around it: who holds the Lease, when another run's Lease has expired, when this
run's own counts as lost.

Whether another run's Lease expired is judged as client-go's leader election
does: by seeing it unchanged for its leaseDurationSeconds on the local monotonic
clock, never by comparing another host's renewTime with this one's clock.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

from kymamesh import MANAGED_BY_LABEL
from kymamesh.errors import ConflictError, LockHeldError, LockLostError, NotFoundError

Obj = dict[str, Any]

LOCK_API_VERSION = "coordination.k8s.io/v1"
LOCK_NAME = "kymamesh-lock"
LOCK_DURATION_S = 30  # leaseDurationSeconds: unchanged this long, another run takes it over
LOCK_RENEW_EVERY_S = 10.0
LOCK_RETRY_EVERY_S = 2.0  # after a failed renewal
LOCK_RENEW_DEADLINE_S = 20.0  # no renewal for this long: the lock counts as lost
LOCK_CALL_TIMEOUT = (3, 5)  # connect, read: a Lease call must fit well inside the deadline
LOCK_TELL_EVERY_S = 10.0  # a waiting run says again who holds the lock and for how long


class LeaseApi(Protocol):
    """The calls on the lock Lease, each with a short request timeout (LOCK_CALL_TIMEOUT)
    and never fenced (they are the fence); errors are kymamesh's named errors. With
    `retry=False` a call is made once, without the retries of transient faults."""

    def lease_get(self, namespace: str, name: str, *, retry: bool = True) -> Obj | None:
        """The Lease; None when it does not exist."""

    def lease_create(self, body: Obj, *, retry: bool = True) -> Obj:
        """Create it (ConflictError when it exists); the object written."""

    def lease_replace(self, body: Obj, *, retry: bool = True) -> Obj:
        """Replace it, conditional on the body's resourceVersion (ConflictError when
        stale, NotFoundError when gone); the object written."""

    def lease_delete(
        self, namespace: str, name: str, resource_version: str, *, retry: bool = True
    ) -> None:
        """Delete it, conditional on its resourceVersion (ConflictError when changed)."""


def lease_name(namespace: str) -> str:
    """How messages name the lock Lease of a namespace."""
    return f"Lease/{namespace}/{LOCK_NAME}"


class LeaseLock:
    """The lock of one connection to a cluster: held for the `with` block of `hold`."""

    def __init__(self, api: LeaseApi) -> None:
        self._api = api
        self._hold: _LeaseHold | None = None  # the lock, while this run holds it

    @property
    def held(self) -> bool:
        """Whether this run holds (or held and lost) the lock right now."""
        return self._hold is not None

    def held_by(self, namespace: str) -> str | None:
        """Who holds the lock of `namespace` now (one read of the Lease); None when nobody."""
        live = self._api.lease_get(namespace, LOCK_NAME)
        holder = ((live or {}).get("spec") or {}).get("holderIdentity")
        return str(holder) if holder else None

    def check(self) -> None:
        """Raise LockLostError when this run took the lock and no longer holds it."""
        hold = self._hold
        if hold is not None:
            hold.check()

    @contextmanager
    def hold(
        self, namespace: str, wait: float, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[str]:
        """Hold the Lease `kymamesh-lock` in `namespace`; yields this run's holder name.

        A second run waits up to `wait` seconds, telling `on_wait` who holds the lock
        and in how long it expires unless renewed (when it starts waiting, when the
        holder changes and every LOCK_TELL_EVERY_S), then names the holder. While
        held, the Lease is renewed in the background, one attempt per renewal; a run
        that cannot renew it for LOCK_RENEW_DEADLINE_S, or finds it changed by someone
        else, has lost it, and its next write raises LockLostError. At the end the
        Lease is deleted if it still names this run.
        """
        holder = lock_holder()
        started = time.monotonic()
        deadline = started + wait
        seen = _LeaseWatch()
        told = ("", 0.0)  # the holder last named, and when
        while True:
            hold = self._try_acquire(namespace, holder, seen)
            if hold is not None:
                break
            spec = seen.spec
            other = str(spec.get("holderIdentity") or "")
            now = time.monotonic()
            if (
                on_wait is not None
                and other
                and (other != told[0] or now - told[1] >= LOCK_TELL_EVERY_S)
            ):
                again = other == told[0]
                told = (other, now)
                on_wait(_waiting_line(namespace, seen, wait, now - started if again else None))
            if time.monotonic() >= deadline:
                raise LockHeldError(
                    f"another kymamesh run holds the lock Lease {lease_name(namespace)}: "
                    f"{other or '(unknown)'} (renewed {spec.get('renewTime')}); "
                    f"waited {wait:.0f}s",
                    hint="wait for that run to finish and try again; a crashed run's lock "
                    f"is taken over once it has gone {LOCK_DURATION_S}s without renewal",
                )
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        self._hold = hold
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew_lock, args=(hold, stop), name="kymamesh-lock", daemon=True
        )
        renewer.start()
        try:
            yield holder
        finally:
            stop.set()
            renewer.join(timeout=LOCK_CALL_TIMEOUT[0] + LOCK_CALL_TIMEOUT[1])
            self._hold = None
            self._release(hold)

    def _try_acquire(self, namespace: str, holder: str, seen: _LeaseWatch) -> _LeaseHold | None:
        """One attempt to take the Lease; None while another run holds it."""
        started = time.monotonic()
        live = self._api.lease_get(namespace, LOCK_NAME)
        if live is None:
            try:
                written = self._api.lease_create(_lease_body(namespace, holder))
            except ConflictError:
                return None  # made meanwhile (by another run, or by this one: seen next time)
            return _LeaseHold(namespace, holder, written, started)
        spec = live.get("spec") or {}
        if spec.get("holderIdentity") == holder:
            # this run's own create or takeover, whose answer was lost and then retried
            return _LeaseHold(namespace, holder, live, started)
        seen.observe(live)
        if spec.get("holderIdentity") and not seen.expired():
            return None
        body = _lease_body(namespace, holder)
        body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        try:
            written = self._api.lease_replace(body)
        except ConflictError:
            return None
        return _LeaseHold(namespace, holder, written, started)

    def _renew_lock(self, hold: _LeaseHold, stop: threading.Event) -> None:
        """Renew every LOCK_RENEW_EVERY_S (after a failure every LOCK_RETRY_EVERY_S) until
        stopped or the lock is lost; a loss is recorded in `hold` for the next write."""
        pause = LOCK_RENEW_EVERY_S
        while not stop.wait(pause):
            started = time.monotonic()
            try:
                self._renew_once(hold)
            except LockLostError as exc:
                hold.lose(exc.message)
                return
            except Exception as exc:  # transient or not: tried again until the deadline
                hold.failed(str(exc) or type(exc).__name__, started)
                if hold.overdue():
                    hold.lose(hold.overdue_message())
                    return
                pause = LOCK_RETRY_EVERY_S
            else:
                pause = LOCK_RENEW_EVERY_S

    def _renew_once(self, hold: _LeaseHold) -> None:
        """Rewrite renewTime, conditional on the resourceVersion this run last wrote: one
        attempt (no retries of transient faults, which could outlast the deadline; the
        next attempt comes LOCK_RETRY_EVERY_S later)."""
        started = time.monotonic()
        body = _lease_body(hold.namespace, hold.holder, hold.acquire_time)
        body["metadata"]["resourceVersion"] = hold.resource_version
        try:
            written = self._api.lease_replace(body, retry=False)
        except (ConflictError, NotFoundError):
            live = self._api.lease_get(hold.namespace, LOCK_NAME, retry=False)
            spec = (live or {}).get("spec") or {}
            if live is not None and spec.get("holderIdentity") == hold.holder:
                # An earlier renewal did land, but its answer was lost: count it from the
                # start of the first attempt since the last renewal known to have landed.
                hold.renewed(live, hold.unconfirmed_since or hold.renewed_at)
                return
            if live is None:
                raise LockLostError(
                    f"the lock Lease {hold.name} was deleted while this run held it"
                ) from None
            else:
                raise LockLostError(
                    f"the lock Lease {hold.name} was changed by someone else while this run "
                    f"held it (holder now {spec.get('holderIdentity') or '(none)'})"
                ) from None
        hold.renewed(written, started)

    def _release(self, hold: _LeaseHold) -> None:
        """Delete the Lease, only if it still names this run: conditional on the
        resourceVersion this run last wrote or, when that is stale (a renewal whose
        answer was lost), on the one just read. Also after the lock counted as lost
        because renewals failed: the run stops writing here, and the next run need not
        wait for the Lease to expire. Taken over by another run, gone, or unreachable:
        left alone."""
        with contextlib.suppress(Exception):
            try:
                self._api.lease_delete(hold.namespace, LOCK_NAME, hold.resource_version)
            except ConflictError:
                live = self._api.lease_get(hold.namespace, LOCK_NAME)
                spec = (live or {}).get("spec") or {}
                if live is not None and spec.get("holderIdentity") == hold.holder:
                    version = str(live["metadata"]["resourceVersion"])
                    self._api.lease_delete(hold.namespace, LOCK_NAME, version)


def lock_holder() -> str:
    """This run's identity in the Lease: host, user id, process id and a random part.

    No user-name lookup: under an arbitrary user id with no passwd entry (as in
    many containers) there is no name, but there is always a number.
    """
    try:
        host = socket.gethostname() or "unknown-host"
    except OSError:
        host = "unknown-host"
    getuid = getattr(os, "getuid", None)
    uid = f"uid-{getuid()}" if getuid is not None else "uid-unknown"
    return f"{host}/{uid}/pid-{os.getpid()}/{uuid.uuid4().hex[:8]}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lease_body(namespace: str, holder: str, acquired: str | None = None) -> Obj:
    now = _now()
    return {
        "apiVersion": LOCK_API_VERSION,
        "kind": "Lease",
        "metadata": {
            "name": LOCK_NAME,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: "kymamesh"},
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": LOCK_DURATION_S,
            "acquireTime": acquired or now,
            "renewTime": now,
        },
    }


def _waiting_line(namespace: str, seen: _LeaseWatch, wait: float, waited: float | None) -> str:
    """What a waiting run says: who holds the lock and in how long its Lease expires
    (by this host's clock: seen unchanged that long); `waited` None the first time."""
    holder = seen.spec.get("holderIdentity")
    expires = f"it expires in {math.ceil(seen.remaining())}s unless renewed"
    if waited is None:
        return (
            f"waiting for the lock: Lease {lease_name(namespace)} is held by {holder}; "
            f"{expires} (taken over once it goes {seen.duration}s without renewal); "
            f"waiting at most {wait:.0f}s"
        )
    return (
        f"still waiting for the lock held by {holder}: {expires}; "
        f"waited {waited:.0f}s of {wait:.0f}s"
    )


class _LeaseWatch:
    """Another run's Lease as this run saw it, and since when (local monotonic clock).

    It counts as expired once seen unchanged for its leaseDurationSeconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.spec: Mapping[str, Any] = {}
        self._version: tuple[str, str] | None = None
        self._since = 0.0

    def observe(self, live: Mapping[str, Any]) -> None:
        spec = live.get("spec") or {}
        version = (
            str((live.get("metadata") or {}).get("resourceVersion") or ""),
            str(spec.get("renewTime") or ""),
        )
        self.spec = spec
        if version != self._version:
            self._version = version
            self._since = self._clock()

    @property
    def duration(self) -> int:
        return int(self.spec.get("leaseDurationSeconds") or LOCK_DURATION_S)

    def remaining(self) -> float:
        """Seconds until it counts as expired, unless it is renewed before."""
        return max(0.0, self.duration - (self._clock() - self._since))

    def expired(self) -> bool:
        return self._version is not None and self._clock() - self._since >= self.duration


class _LeaseHold:
    """The Lease this run holds: the resourceVersion it last wrote, and when the write
    that produced it started (local monotonic clock)."""

    def __init__(
        self,
        namespace: str,
        holder: str,
        written: Mapping[str, Any],
        started: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.name = lease_name(namespace)
        self.holder = holder
        self._clock = clock
        self._mutex = threading.Lock()
        self.acquire_time = str((written.get("spec") or {}).get("acquireTime") or "") or None
        self.resource_version = str(written["metadata"]["resourceVersion"])
        self.renewed_at = started
        self.lost: str | None = None
        self.last_error = ""
        # the start of the first renewal attempt since the last one known to have landed
        self.unconfirmed_since: float | None = None

    def renewed(self, written: Mapping[str, Any], started: float) -> None:
        with self._mutex:
            self.resource_version = str(written["metadata"]["resourceVersion"])
            self.renewed_at = started
            self.last_error = ""
            self.unconfirmed_since = None

    def failed(self, error: str, started: float) -> None:
        """A renewal attempt failed (it may still have landed)."""
        with self._mutex:
            self.last_error = error
            if self.unconfirmed_since is None:
                self.unconfirmed_since = started

    def lose(self, why: str) -> None:
        with self._mutex:
            if self.lost is None:
                self.lost = why

    def overdue(self) -> bool:
        return self._clock() - self.renewed_at > LOCK_RENEW_DEADLINE_S

    def overdue_message(self) -> str:
        return (
            f"the lock Lease {self.name} could not be renewed for {LOCK_RENEW_DEADLINE_S}s"
            + (f" (last error: {self.last_error})" if self.last_error else "")
            + f"; after {LOCK_DURATION_S}s without renewal another run may take it"
        )

    def check(self) -> None:
        with self._mutex:
            why = self.lost
        if why is None and self.overdue():
            self.lose(self.overdue_message())
            why = self.lost
        if why is not None:
            raise LockLostError(
                f"this run lost its lock and stopped before its next write: {why}",
                hint="another kymamesh run may be writing now; when it has finished, re-run "
                "this command (it converges); a slow or unreachable API server can also "
                "cause this",
            )
