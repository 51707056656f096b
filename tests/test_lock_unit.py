"""The lock's pure logic: the holder name under any user id, expiry judged by watching the
Lease on the local monotonic clock, and a hold that counts as lost once renewals stop."""

from __future__ import annotations

import getpass
import os
import pwd
from typing import Any

import pytest

from kymamesh.adapters import lock as adapter
from kymamesh.errors import ExitCode, LockLostError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_holder_name_works_for_a_user_id_without_a_passwd_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid: int) -> Any:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises((KeyError, OSError)):
        getpass.getuser()  # what such a process meets when it asks for its user name
    holder = adapter.lock_holder()
    assert f"/uid-{os.getuid()}/pid-{os.getpid()}/" in holder
    assert holder != adapter.lock_holder()  # two runs of one process never share a name


def lease(rv: str, renew: str, holder: str = "other", duration: int = 30) -> dict[str, Any]:
    return {
        "metadata": {"resourceVersion": rv},
        "spec": {"holderIdentity": holder, "renewTime": renew, "leaseDurationSeconds": duration},
    }


def test_lease_expires_only_after_being_seen_unchanged_for_its_duration() -> None:
    clock = Clock()
    watch = adapter._LeaseWatch(clock)
    far_past = "2001-01-01T00:00:00.000000Z"  # another host's clock says nothing here
    watch.observe(lease("7", far_past))
    assert not watch.expired()
    clock.now += 29.9
    watch.observe(lease("7", far_past))
    assert not watch.expired()
    clock.now += 0.1
    assert watch.expired()


def test_a_renewed_lease_starts_its_duration_again() -> None:
    clock = Clock()
    watch = adapter._LeaseWatch(clock)
    future = "2999-01-01T00:00:00.000000Z"
    watch.observe(lease("7", future, duration=10))
    clock.now += 9
    watch.observe(lease("8", future, duration=10))  # renewed (new resourceVersion)
    clock.now += 9
    assert not watch.expired()
    clock.now += 1
    assert watch.expired()


def test_hold_counts_as_lost_once_renewals_stop_for_the_deadline() -> None:
    clock = Clock()
    written = {"metadata": {"resourceVersion": "1"}, "spec": {"acquireTime": "t"}}
    hold = adapter._LeaseHold("istio-system", "me", written, clock(), clock)
    clock.now += adapter.LOCK_RENEW_DEADLINE_S
    hold.check()  # still within the deadline
    hold.renewed({"metadata": {"resourceVersion": "2"}}, clock())
    clock.now += adapter.LOCK_RENEW_DEADLINE_S + 0.1
    with pytest.raises(LockLostError) as lost:
        hold.check()
    assert lost.value.exit_code == ExitCode.LOCK_LOST
    assert lost.value.hint
    assert adapter.LOCK_RENEW_DEADLINE_S < adapter.LOCK_DURATION_S  # stops before it can expire


def test_a_waiting_run_says_when_the_lease_expires_by_its_own_clock() -> None:
    clock = Clock()
    watch = adapter._LeaseWatch(clock)
    watch.observe(lease("7", "2999-01-01T00:00:00.000000Z", holder="busy", duration=30))
    clock.now += 12.5
    first = adapter._waiting_line("istio-system", watch, 60, None)
    assert first == (
        "waiting for the lock: Lease Lease/istio-system/kymamesh-lock is held by busy; it "
        "expires in 18s unless renewed (taken over once it goes 30s without renewal); "
        "waiting at most 60s"
    )
    again = adapter._waiting_line("istio-system", watch, 60, 20.2)
    assert again == (
        "still waiting for the lock held by busy: it expires in 18s unless renewed; "
        "waited 20s of 60s"
    )
    clock.now += 100
    assert watch.remaining() == 0
