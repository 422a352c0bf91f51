"""Entry point of a local worker process: ``python -m shardwren.backends._worker``.

Protocol over one socket (``multiprocessing.connection`` framing, pickled tuples):

* driver -> worker: ``("run", [(seq, fn_id, fn_bytes | None, args_bytes, memory_limit), ...])``
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


def _load_fn(fns: OrderedDict, fn_id: str, fn_bytes: bytes | None, key: bytes | None):
    if fn_bytes is not None:
        from .. import serialize

        try:
            fns[fn_id] = pickle.loads(serialize.open_signed(key, fn_bytes, "function")
                                      if key else fn_bytes)
        except BaseException as exc:  # noqa: BLE001 - reported per task
            fns[fn_id] = exc
        if len(fns) > FN_CACHE_SIZE:
            fns.popitem(last=False)
    else:
        fns.move_to_end(fn_id)
    return fns[fn_id]


class _Outbox:
    """Results waiting to be sent; batched, but never held back for long.

    The main thread flushes at the end of each batch; a timer thread flushes
    results that have waited ``FLUSH_SECONDS`` while a later task in the same
    batch is still running (a quick task's result must not wait for a slow one).
    """

    def __init__(self, conn: Connection):
        self.conn = conn
        self.items: list = []
        self.cond = threading.Condition()
        threading.Thread(target=self._timer, daemon=True).start()

    def add(self, item: tuple) -> None:
        with self.cond:
            self.items.append(item)
            if len(self.items) == 1:
                self.cond.notify()
            elif len(self.items) >= FLUSH_COUNT:
                self._send()

    def flush(self) -> None:
        with self.cond:
            self._send()

    def _send(self) -> None:
        if self.items:
            self.conn.send_bytes(pickle.dumps(("done", self.items), protocol=pickle.HIGHEST_PROTOCOL))
            self.items = []

    def _timer(self) -> None:
        with self.cond:
            while True:
                while not self.items:
                    self.cond.wait()
                first = self.items[0]
                self.cond.wait(FLUSH_SECONDS)
                if self.items and self.items[0] is first:
                    try:
                        self._send()
                    except OSError:
                        return


def serve(conn: Connection, slot: mmap.mmap) -> None:
    """Receive task batches and run them until told to exit or the driver goes."""
    from .base import run_task

    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_reader, args=(conn, inbox), daemon=True).start()
    fns: OrderedDict = OrderedDict()
    outbox = _Outbox(conn)
    key = None  # the executor's signing key arrives first, over this private socket
    while True:
        msg = inbox.get()
        if msg is None:
            return
        kind, body = pickle.loads(msg)  # framing only: tuples of bytes and ints
        if kind == "exit":
            outbox.flush()
            return
        if kind == "key":
            key = body
            continue
        for seq, fn_id, fn_bytes, payload, memory_limit in body:
            fn = _load_fn(fns, fn_id, fn_bytes, key)
            struct.pack_into("qd", slot, 0, seq, time.time())
            ok, data, stats = run_task(fn, payload, memory_limit, key)
            struct.pack_into("qd", slot, 0, 0, 0.0)
            outbox.add((seq, ok, data, stats))
        outbox.flush()  # end of the driver's batch


def main(argv: list[str]) -> None:
    fd, slot_fd, blas_threads = int(argv[0]), int(argv[1]), int(argv[2])
    faulthandler.enable()
    # Ctrl-C belongs to the driver; it shuts us down cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    from threadpoolctl import threadpool_limits

    threadpool_limits(blas_threads)
    # A task's logging.info() is captured into its future's logs (root defaults to WARNING).
    import logging

    logging.getLogger().setLevel(logging.INFO)
    slot = mmap.mmap(slot_fd, 16)
    os.close(slot_fd)
    conn = Connection(fd)
    try:
        serve(conn, slot)
    finally:
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
