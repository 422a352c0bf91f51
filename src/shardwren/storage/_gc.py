"""Garbage a killed process leaves in a store, and its removal (``shardwren store gc``).

Three kinds, each named after its owner (see :mod:`._owners`), and a fourth on request:

* **scratch**: ``tmp/<name>-<owner tag>-<id>``, the inputs and intermediates a
  driver shards into the store for one call and deletes when the call ends;
* **partial**: ``<key>.<owner tag>.<id>.partial``, a local value being written
  (renamed into place when complete);
* **lease**: ``_shardwren/owners/<owner tag>.json``, an owner's sign of life;
* **result** (only with ``results_max_age``): ``_shardwren/results/<job>/<task>``, the
  outcome of a future pickled before it finished, written so that a copy loaded
  later elsewhere can fetch it. Nothing says when nobody will ask for it any more,
  so it is collected by age alone, when the caller gives one.

Something is garbage when its owner is dead: on this machine, its process is
gone; elsewhere, its lease expired. A ``.partial`` written by a process on another
machine that holds no lease (a worker) counts as abandoned once it is older than
``partial_max_age``: a write never takes that long. Nothing without an owner tag
under ``tmp/`` is touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _owners

if TYPE_CHECKING:
    from . import Store

#: Where scratch matrices live.
SCRATCH_PREFIX = "tmp"
#: A lease-less ``.partial`` older than this (seconds) is abandoned.
PARTIAL_MAX_AGE_S = 3600.0
#: Where an executor writes the outcomes of futures pickled before they finished.
RESULTS_PREFIX = "_shardwren/results"


@dataclass(frozen=True)
class Garbage:
    """One thing :func:`collect_garbage` found (and, unless ``dry_run``, removed)."""

    key: str
    """The key, or for scratch the prefix of every key removed."""
    kind: str
    """``"scratch"``, ``"partial"``, ``"lease"`` or ``"result"``."""
    owner: str | None
    """The owner tag (None for an untagged ``.partial`` of an older shardwren)."""
    nbytes: int
    reason: str


def _alive(store: Store, tag: str, cache: dict[str, bool]) -> bool:
    if tag not in cache:
        cache[tag] = _owners.owner_alive(store, tag)
    return cache[tag]


def _dead_reason(tag: str) -> str:
    here = _owners.alive_here(tag)
    who = _owners.describe(tag)
    if here is not None:
        return f"its owner, process {who.get('pid')} on this machine, has exited"
    return (f"its owner, process {who.get('pid')} on machine {who.get('host_id')}, "
            f"renewed no lease for {_owners.LEASE_TTL_S:.0f} s")


def find_garbage(store: Store, partial_max_age: float = PARTIAL_MAX_AGE_S,
                 results_max_age: float | None = None) -> list[Garbage]:
    """What no live process owns in ``store`` and, with ``results_max_age`` (seconds),
    stored outcomes older than that (nothing is removed)."""
    found: list[Garbage] = []
    alive: dict[str, bool] = {}
    now = time.time()
    # scratch matrices: one entry per tmp/<name>
    nodes: dict[str, list[str]] = {}
    for key in store.list(SCRATCH_PREFIX):
        parts = key.split("/")
        if len(parts) >= 3:
            nodes.setdefault(parts[1], []).append(key)
    for name, keys in sorted(nodes.items()):
        tag = _owners.find_tag(name)
        if tag is None or _alive(store, tag, alive):
            continue
        nbytes = sum(_size(store, k) for k in keys)
        found.append(Garbage(f"{SCRATCH_PREFIX}/{name}", "scratch", tag, nbytes,
                             _dead_reason(tag)))
    # temporaries of interrupted writes
    for key, mtime, nbytes in store.temporaries():
        tag = _owners.find_tag(key.rsplit("/", 1)[-1])
        age = now - mtime
        if tag is not None:
            here = _owners.alive_here(tag)
            if here is True:
                continue
            if here is None and (_owners.lease_fresh(store, tag) or age < partial_max_age):
                continue
            reason = (_dead_reason(tag) if here is False
                      else f"written {age:.0f} s ago by a process on another machine "
                           "that holds no lease")
        elif age >= partial_max_age:
            reason = f"an untagged temporary last written {age:.0f} s ago"
        else:
            continue
        found.append(Garbage(key, "partial", tag, nbytes, reason))
    # leases of dead owners
    for key in store.list(_owners.LEASE_PREFIX):
        tag = _owners.find_tag(key.rsplit("/", 1)[-1])
        if tag is not None and not _alive(store, tag, alive):
            found.append(Garbage(key, "lease", tag, _size(store, key), _dead_reason(tag)))
    # stored outcomes, by age
    if results_max_age is not None:
        for key in store.list(RESULTS_PREFIX):
            try:
                written = store.modified(key)
            except OSError:
                continue  # removed meanwhile
            if written is not None and now - written >= results_max_age:
                found.append(Garbage(key, "result", None, _size(store, key),
                                     f"a stored outcome written {(now - written) / 86400:.1f} "
                                     "days ago"))
    return found


def _size(store: Store, key: str) -> int:
    try:
        return store.size(key)
    except OSError:
        return 0


def collect_garbage(store: Store | str | None = None, dry_run: bool = False,
                    partial_max_age: float = PARTIAL_MAX_AGE_S,
                    results_max_age: float | None = None) -> list[Garbage]:
    """Remove what killed processes left in a store, and say what it was.

    Parameters
    ----------
    store : Store or str, optional
        The store (default: the default store).
    dry_run : bool
        Only list what would be removed.
    partial_max_age : float
        Seconds after which a ``.partial`` temporary of a process whose liveness
        cannot be checked (another machine, no lease) counts as abandoned.
    results_max_age : float, optional
        Also remove outcomes stored for pickled futures (``_shardwren/results``)
        written more than this many seconds ago (default: keep them all). A future
        pickled earlier and loaded after that can no longer fetch its outcome.

    Returns
    -------
    list of Garbage
        Everything found (removed unless ``dry_run``), scratch first.
    """
    from . import open_store

    store = open_store(store)
    found = find_garbage(store, partial_max_age, results_max_age)
    if not dry_run:
        for g in found:
            store.delete(g.key, missing_ok=True)
    return found
