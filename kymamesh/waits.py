"""The one wait loop: poll until something is done, or say after the timeout what is not.

Every wait of kymamesh (objects ready, an injector answering, a tag in effect, objects
gone, rollouts finished) is a `wait_until`: a check that returns what is still pending
(None once done), polled soon after a change and then less often, and a timeout that
names what was still pending when it ran out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kymamesh.errors import WaitTimeoutError


def wait_until(
    pending: Callable[[], str | None],
    timeout: float,
    message: Callable[[str], str],
    hint: str,
    *,
    first: float = 0.1,
    most: float = 1.0,
    grow: float = 2.0,
    pause: Callable[[float], None] | None = None,
) -> None:
    """Call `pending` until it returns None, for at most `timeout` seconds: `first`
    seconds apart at first, the pause growing by `grow` up to `most`. `pending` returns
    what is not done yet (it may raise to end the wait early with its own error); when
    the time is up, WaitTimeoutError(message(what was pending last), hint). `pause(s)`
    waits between two calls (default: sleeps `s` seconds; a watch may end it sooner, when
    what is waited for changed)."""
    deadline = time.monotonic() + timeout
    interval = first
    while True:
        seen = pending()
        if seen is None:
            return
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(message(seen), hint=hint)
        (pause or time.sleep)(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(most, interval * grow)
