"""Who owns a temporary key, and whether that owner still lives.

A driver killed mid-job leaves its scratch inputs (``tmp/<name>-<tag>-<id>``) in the
store, and a process killed mid-write its ``.partial`` temporaries. Both names carry
the writer's *owner tag*, so :func:`shardwren.storage.collect_garbage` can tell what a
live process still needs from what nobody will ever come back for:

* an owner on this machine (same host, boot and PID namespace) is alive exactly when
  its process is (pid *and* start time match: a recycled pid is not mistaken for the
  owner);
* an owner on another machine is alive while its *lease* in the store,
  ``_shardwren/owners/<tag>.json``, renewed every :data:`RENEW_S` seconds by a
  daemon thread of the owning process, is younger than :data:`LEASE_TTL_S`.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from . import Store

#: Where leases live in a store.
LEASE_PREFIX = "_shardwren/owners"
#: A lease is renewed this often (seconds) ...
RENEW_S = 30.0
#: ... and counts as expired (its owner dead) this long after its last renewal:
#: generous, so that clock skew between machines or a slow store never kills a live job.
LEASE_TTL_S = 600.0

#: An owner tag inside a key: host id (8 hex), pid, process start time (base 36).
TAG_RE = re.compile(r"o([0-9a-f]{8})p([0-9]+)s([0-9a-z]+)")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def host_id() -> str:
    """8 hex digits naming this machine *since its last boot* (after a reboot no
    process of before is alive, and the pids start over) *and this PID namespace*:
    containers sharing a host name and kernel (``--uts=host``, pods) cannot see each
    other's processes, so to each other they are other machines, known by their leases."""
    ident = f"{socket.gethostname()}|{_boot_id()}|{_pid_namespace()}"
    return hashlib.sha1(ident.encode()).hexdigest()[:8]


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux); None if it does not
    exist or is a zombie (killed, not yet reaped); 0 where there is no /proc to ask."""
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        if fields[0] in ("Z", "X"):  # a zombie has done all it will ever do
            return None
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0


_tag_cache: tuple[int, str] | None = None


def owner_tag() -> str:
    """This process's owner tag (recomputed after a fork)."""
    global _tag_cache
    pid = os.getpid()
    if _tag_cache is None or _tag_cache[0] != pid:
        _tag_cache = (pid, f"o{host_id()}p{pid}s{_base36(process_start(pid) or 0)}")
    return _tag_cache[1]


def find_tag(name: str) -> str | None:
    """The owner tag inside a key or file name, if any."""
    m = TAG_RE.search(name)
    return m.group(0) if m else None


def alive_here(tag: str) -> bool | None:
    """Whether the owner is alive, if it ran on this machine since its last boot;
    None when it ran elsewhere (only its lease can tell)."""
    m = TAG_RE.fullmatch(tag)
    if m is None or m.group(1) != host_id():
        return None
    start = process_start(int(m.group(2)))
    if start is None:
        return False
    return start == 0 or _base36(start) == m.group(3)


def lease_key(tag: str) -> str:
    return f"{LEASE_PREFIX}/{tag}.json"


def lease_fresh(store: Store, tag: str, now: float | None = None) -> bool:
    """Whether ``tag``'s lease in ``store`` was renewed less than :data:`LEASE_TTL_S` ago."""
    from ..errors import KeyNotFoundError

    try:
        doc = json.loads(store.get(lease_key(tag)))
        renewed = float(doc["renewed"])
    except KeyNotFoundError:
        return False
    except (ValueError, KeyError, TypeError):
        return False  # an unreadable lease protects nothing
    return (time.time() if now is None else now) - renewed < LEASE_TTL_S


def owner_alive(store: Store, tag: str) -> bool:
    """Whether the owner named by ``tag`` may still need what it owns in ``store``."""
    here = alive_here(tag)
    return here if here is not None else lease_fresh(store, tag)


class _Leases:
    """The leases this process holds: renewed by one daemon thread, removed at exit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stores: dict[str, Store] = {}
        self.pid = os.getpid()
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()

    def hold(self, store: Store) -> None:
        with self.lock:
            if store.url in self.stores:
                return
            self.stores[store.url] = store
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="shardwren-lease",
                                               daemon=True)
                self.thread.start()
                at_exit(self.release_all)
        self._renew(store)  # before the caller creates anything the lease must cover

    def _renew(self, store: Store) -> None:
        doc = {"host": socket.gethostname(), "pid": os.getpid(), "renewed": time.time()}
        store.put(lease_key(owner_tag()), json.dumps(doc).encode())

    def _run(self) -> None:
        while not self.stop.wait(RENEW_S):
            with self.lock:
                stores = list(self.stores.values())
            for store in stores:
                try:
                    self._renew(store)
                except Exception:  # noqa: BLE001 - a missed renewal is retried; TTL is 20 renewals
                    pass

    def release_all(self, timeout: float = 2.0) -> None:
        """Remove this process's leases (at exit), after :func:`before_release`'s
        callbacks (executors finishing their tasks). Bounded: an unreachable store must
        not hold up the interpreter's exit; `store gc` removes a lease left behind."""
        if os.getpid() != self.pid:
            return
        for fn in list(_BEFORE_RELEASE):
            fn()
        self.stop.set()
        with self.lock:
            stores, self.stores = list(self.stores.values()), {}

        def remove() -> None:
            for store in stores:
                try:
                    store.delete(lease_key(owner_tag()), missing_ok=True)
                except Exception:  # noqa: BLE001 - exiting; gc removes a stale lease later
                    pass

        t = threading.Thread(target=remove, name="shardwren-lease-release", daemon=True)
        t.start()
        t.join(timeout)


_BEFORE_RELEASE: list[Callable[[], None]] = []


def before_release(fn: Callable[[], None]) -> None:
    """Have the exit hook call ``fn`` before it removes this process's leases (an
    executor's tasks still running at exit keep their scratch and need the lease)."""
    if fn not in _BEFORE_RELEASE:
        _BEFORE_RELEASE.append(fn)


def at_exit(fn: Callable[[], None]) -> None:
    """Call ``fn`` as the program ends, while its threads still work: threading's exit
    hooks run before ``atexit``, where concurrent.futures has already refused new work,
    and with it the thread that resolves an S3 endpoint's name (the lease stayed)."""
    try:
        threading._register_atexit(fn)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        atexit.register(fn)


_leases: _Leases | None = None
_leases_lock = threading.Lock()


def hold_lease(store: Store) -> None:
    """Keep a renewed lease for this process in ``store`` until the process exits.

    Called before creating anything the owner tag names (scratch matrices), so that
    a process on another machine running ``store gc`` sees the owner alive.
    Memory stores need none: nothing outside this process sees them.
    """
    global _leases
    if store.scheme == "memory":
        return
    with _leases_lock:
        if _leases is None or _leases.pid != os.getpid():
            _leases = _Leases()
        leases = _leases
    leases.hold(store)


def describe(tag: str) -> dict[str, Any]:
    """The host id and pid a tag names (for messages)."""
    m = TAG_RE.fullmatch(tag)
    return {"host_id": m.group(1), "pid": int(m.group(2))} if m else {}
