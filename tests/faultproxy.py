"""A TCP proxy on loopback that injects transient faults between a client and the test
cluster's apiserver: it resets some new connections at once and cuts others after a
number of bytes of the server's reply. TLS passes through untouched (the kubeconfig keeps
its certificates, only the server address changes).

Faults follow a plan fixed in advance, so a test never depends on chance: either an
explicit schedule (`{connection number: "reset" | "cut"}`) or rates drawn from a seeded
random generator, with an optional cap on the number of faults. A cut that does not happen
(the connection closed before its byte count was reached) moves to the next connection.

    with FaultProxy(("127.0.0.1", 6443), schedule={2: "reset", 5: "cut"}) as proxy:
        proxy.kubeconfig(original, copy)        # a kubeconfig that goes through it
        ...
    proxy.stats                                 # connections, resets, cuts
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml


@dataclass
class Stats:
    connections: int = 0
    resets: int = 0
    cuts: int = 0

    def __str__(self) -> str:
        return f"{self.connections} connections, {self.resets} reset, {self.cuts} cut mid-reply"


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a refused or dropped connection looks."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked reading it; sends nothing
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        schedule: dict[int, str] | None = None,
        seed: int = 0,
        reset_rate: float = 0.0,
        cut_rate: float = 0.0,
        max_faults: int | None = None,
        cut_after: tuple[int, int] = (8_000, 40_000),
    ) -> None:
        self.upstream = upstream
        self.schedule = dict(schedule or {})
        self.reset_rate = reset_rate
        self.cut_rate = cut_rate
        self.max_faults = max_faults
        self.cut_after = cut_after
        self.stats = Stats()
        self._random = random.Random(seed)
        self._mutex = threading.Lock()
        self._armed_cut = 0  # cuts planned and not yet given to a connection
        self._cutting = 0  # cuts given to connections still open
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._mutex:
            live = list(self._sockets)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(timeout=5)

    @property
    def address(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, source: Path, dest: Path) -> Path:
        """A copy of kubeconfig `source` whose clusters point at the proxy."""
        config = yaml.safe_load(Path(source).read_text())
        for entry in config.get("clusters") or []:
            entry["cluster"]["server"] = self.address
        dest.write_text(yaml.safe_dump(config))
        return dest

    # -- the plan -----------------------------------------------------------------------------

    def _faults_left(self) -> bool:
        done = self.stats.resets + self.stats.cuts + self._armed_cut + self._cutting
        return self.max_faults is None or done < self.max_faults

    def _decide(self, number: int) -> str:
        """What happens to the connection with this number (1, 2, ...): pass, reset or cut."""
        planned = self.schedule.get(number)
        if planned is None and (self.reset_rate or self.cut_rate):
            draw = self._random.random()
            if draw < self.reset_rate:
                planned = "reset"
            elif draw < self.reset_rate + self.cut_rate:
                planned = "cut"
        if planned is not None and not self._faults_left():
            planned = None
        if planned == "cut":
            self._armed_cut += 1
        if planned in (None, "cut") and self._armed_cut:
            self._armed_cut -= 1  # this one, or an earlier cut that did not happen
            self._cutting += 1
            return "cut"
        return planned or "pass"

    # -- the work -----------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._mutex:
                self.stats.connections += 1
                action = self._decide(self.stats.connections)
                if action == "reset":
                    self.stats.resets += 1
            if action == "reset":
                _reset(client)
                continue
            limit = self._random.randint(*self.cut_after) if action == "cut" else None
            threading.Thread(
                target=self._serve, args=(client, limit), name="fault-proxy-conn", daemon=True
            ).start()

    def _serve(self, client: socket.socket, limit: int | None) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _reset(client)
            return
        server.settimeout(None)
        with self._mutex:
            self._sockets.update((client, server))
        cut = threading.Event()
        up = threading.Thread(target=self._pump, args=(client, server, None, cut), daemon=True)
        up.start()
        self._pump(server, client, limit, cut)
        up.join(timeout=5)
        with self._mutex:
            self._sockets.difference_update((client, server))
            if limit is not None:
                self._cutting -= 1
                if cut.is_set():
                    self.stats.cuts += 1
                else:  # closed before its cut: the cut goes to a later connection
                    self._armed_cut += 1

    @staticmethod
    def _pump(
        src: socket.socket, dst: socket.socket, limit: int | None, cut: threading.Event
    ) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: max(0, limit - sent)])
                    cut.set()
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            if cut.is_set():
                _reset(dst)
                _reset(src)
            else:
                for sock in (dst, src):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    with contextlib.suppress(OSError):
                        sock.close()


def upstream_of(kubeconfig: Path) -> tuple[str, int]:
    """Host and port of the first cluster's server in a kubeconfig."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    if not server.hostname or not server.port:
        raise ValueError(f"no server host and port in {kubeconfig}")
    return server.hostname, server.port
