"""Worker side: a local worker process, ``python -m shardwren.backends._worker``.

Protocol over one socket (``multiprocessing.connection`` framing, pickled tuples):

* driver -> worker: ``("key", bytes)`` first (the signing key, never in argv or the
  environment), then ``("run", [(seq, pos, fn_id, fn_bytes | None, args_bytes,
  memory_limit, where), ...])`` (``pos`` counts the tasks sent to this worker, from 1;
  ``where`` names the task for errors raised here, sent with a memory limit only) or
  ``("exit", None)``;
* worker -> driver: ``("done", [(seq, ok, value_or_error_bytes, stats), ...])``, in the
  order the tasks were received; ``ok`` is None for a task the driver withdrew.

Tasks run strictly in the order received. Before running a task the worker
writes its start time and then its sequence number into a shared-memory slot
(and clears the number after), so that the driver knows which task is running,
since when (for timeouts), and which task killed the worker if it dies
(loky-style crash attribution without an extra message per task).

The same slot lets the driver take back a task queued behind another one
(``cancel()`` of a task that has not started) without a round trip: the worker
*claims* a task by writing its ``pos`` at :data:`CLAIM_OFF` and then reads the
task's entry in the withdrawal ring; the driver *withdraws* one by writing its
``pos`` into the ring and then reading the claim. Each side writes before it reads
(with a full memory barrier in between, :func:`fence`), so at least one of them sees
the other (Dekker): either the driver sees the claim (the task started: cancel
fails) or the worker sees the withdrawal (it skips the task), never neither.

The worker dies with the driver: the kernel sends it SIGKILL when the driver's
thread that started it ends (``PR_SET_PDEATHSIG``, Linux), which works even while
a task holds the GIL; a watchdog thread covers other systems.
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
from multiprocessing.connection import Connection

from .runtime import FunctionCache, run_task

#: Shared slot layout: running seq (q), its start time (d), last claimed pos (q), pad,
#: then the withdrawal ring (q per entry, indexed by pos % RING).
CLAIM_OFF = 16
RING_OFF = 32
#: Larger than the most tasks a worker ever has queued (MAX_BATCH in local.py), so two
#: queued tasks never share an entry; an entry holds the exact pos, never a hash of it.
RING = 512
SLOT_BYTES = RING_OFF + 8 * RING

_FENCE = threading.Lock()


def fence() -> None:
    """A full memory barrier: taking a lock is an atomic read-modify-write, which
    orders the shared-memory store before it and the load after it."""
    with _FENCE:
        pass


#: Results are batched for at most this long before being sent.
FLUSH_SECONDS = 0.002
FLUSH_COUNT = 256
PR_SET_PDEATHSIG = 1


def _reader(conn: Connection, inbox: queue.SimpleQueue) -> None:
    # A dedicated reader keeps the driver's sends from ever blocking on a busy
    # worker, which rules out the classic both-sides-full pipe deadlock.
    try:
        while True:
            inbox.put(conn.recv_bytes())
    except (EOFError, OSError):
        inbox.put(None)


def die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to SIGKILL this process when its parent goes (Linux).

    Returns whether that is in place. A Python watchdog thread cannot do this
    reliably: a task that holds the GIL (a regex backtracking for minutes, a long
    C call) never lets it run.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(0)
    return True


def _watch_parent(ppid: int) -> None:
    # The fallback where the kernel cannot do it: orphans exit between two bytecodes.
    while True:
        time.sleep(0.5)
        if os.getppid() != ppid:
            os._exit(0)


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
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_reader, args=(conn, inbox), daemon=True).start()
    fns = FunctionCache()  # the driver mirrors its LRU to know when to resend a function
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
        for seq, pos, fn_id, fn_bytes, payload, memory_limit, where in body:
            fn = fns.load(fn_id, fn_bytes, key) if fn_bytes is not None else fns.get(fn_id)
            struct.pack_into("q", slot, CLAIM_OFF, pos)
            fence()
            if struct.unpack_from("q", slot, RING_OFF + 8 * (pos % RING))[0] == pos:
                now = time.time()  # withdrawn by the driver before it started: skip it
                outbox.add((seq, None, b"", {"started": now, "finished": now}))
                continue
            # Start time before sequence number: a reader that sees the number sees its time.
            struct.pack_into("d", slot, 8, time.time())
            struct.pack_into("q", slot, 0, seq)
            ok, data, stats = run_task(fn, payload, memory_limit, key, where=where)
            struct.pack_into("q", slot, 0, 0)
            outbox.add((seq, ok, data, stats))
        outbox.flush()  # end of the driver's batch


def main(argv: list[str]) -> None:
    fd, slot_fd, blas_threads = int(argv[0]), int(argv[1]), int(argv[2])
    parent = int(argv[3]) if len(argv) > 3 else os.getppid()
    die_with_parent(parent)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    faulthandler.enable()
    # Ctrl-C belongs to the driver; it shuts us down cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from threadpoolctl import threadpool_limits

    threadpool_limits(blas_threads)
    # A task's logging.info() is captured into its future's logs (root defaults to WARNING).
    import logging

    logging.getLogger().setLevel(logging.INFO)
    slot = mmap.mmap(slot_fd, SLOT_BYTES)
    os.close(slot_fd)
    conn = Connection(fd)
    try:
        serve(conn, slot)
    finally:
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
