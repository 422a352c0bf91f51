"""Entry point of a local worker process: ``python -m shardwren.backends._worker``.

Protocol over one socket (``multiprocessing.connection`` framing, pickled tuples):

* driver -> worker: ``("run", [(seq, fn_id, fn_bytes | None, args_bytes), ...])``
  or ``("exit", None)``;
* worker -> driver: ``("done", [(seq, ok, value_or_error_bytes, stats), ...])``.

Tasks run strictly in the order received. Before running a task the worker
writes its sequence number into an 8-byte shared-memory slot, so that when the
process dies the driver knows exactly which task killed it (loky-style crash
attribution without an extra message per task).
"""

from __future__ import annotations

import faulthandler
import mmap
import os
import pickle
import queue
import signal
import struct
import sys
import threading
import time
from collections import OrderedDict
from multiprocessing.connection import Connection

#: Functions cached per worker; the driver mirrors this LRU exactly.
FN_CACHE_SIZE = 64
#: Results are batched for at most this long before being sent.
FLUSH_SECONDS = 0.002
FLUSH_COUNT = 256


def _reader(conn: Connection, inbox: queue.SimpleQueue) -> None:
    # A dedicated reader keeps the driver's sends from ever blocking on a busy
    # worker, which rules out the classic both-sides-full pipe deadlock.
    try:
        while True:
            inbox.put(conn.recv_bytes())
    except (EOFError, OSError):
        inbox.put(None)


def _watch_parent(ppid: int) -> None:
    # Orphans must not outlive the driver, even in the middle of a long task.
    while True:
        time.sleep(0.5)
        if os.getppid() != ppid:
            os._exit(0)


def _load_fn(fns: OrderedDict, fn_id: str, fn_bytes: bytes | None):
    if fn_bytes is not None:
        try:
            fns[fn_id] = pickle.loads(fn_bytes)
        except BaseException as exc:  # noqa: BLE001 - reported per task
            fns[fn_id] = exc
        if len(fns) > FN_CACHE_SIZE:
            fns.popitem(last=False)
    else:
        fns.move_to_end(fn_id)
    return fns[fn_id]


def serve(conn: Connection, slot: mmap.mmap) -> None:
    """Receive task batches and run them until told to exit or the driver goes."""
    from .base import run_task

    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_reader, args=(conn, inbox), daemon=True).start()
    fns: OrderedDict = OrderedDict()
    out: list = []
    first_buffered = 0.0

    def flush() -> None:
        conn.send_bytes(pickle.dumps(("done", out), protocol=pickle.HIGHEST_PROTOCOL))
        out.clear()

    while True:
        msg = inbox.get()
        if msg is None:
            return
        kind, body = pickle.loads(msg)
        if kind == "exit":
            return
        for seq, fn_id, fn_bytes, payload in body:
            fn = _load_fn(fns, fn_id, fn_bytes)
            struct.pack_into("q", slot, 0, seq)
            ok, data, stats = run_task(fn, payload)
            struct.pack_into("q", slot, 0, 0)
            if not out:
                first_buffered = time.monotonic()
            out.append((seq, ok, data, stats))
            if len(out) >= FLUSH_COUNT or time.monotonic() - first_buffered > FLUSH_SECONDS:
                flush()
        if out:  # end of the driver's batch: it sized the batch for low latency
            flush()


def main(argv: list[str]) -> None:
    fd, slot_fd, blas_threads = int(argv[0]), int(argv[1]), int(argv[2])
    faulthandler.enable()
    # Ctrl-C belongs to the driver; it shuts us down cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    from threadpoolctl import threadpool_limits

    threadpool_limits(blas_threads)
    slot = mmap.mmap(slot_fd, 8)
    os.close(slot_fd)
    conn = Connection(fd)
    try:
        serve(conn, slot)
    finally:
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
