"""The tracking process: one Python process beside a run that makes its MLflow calls, in the order
they were sent. MLflow's import, store and logging, and the models' export, then run on a core of
their own instead of taking turns with the run on its interpreter lock (benchmarks/RESULTS.md,
"Start-up"). Calls are pickled through a pipe; each returns (lines to print, value) or its error.

The process starts with the run's first call (`metatrain train` makes it before importing torch),
serves every tracker of the run's process (a population's members too: one writer for a SQLite
store), and ends with it: `close` after the last reply, or at once when the run's process dies
(Linux: the parent-death signal), as a thread would have.

    python -m pipeline.tracking_process PARENT_PID IN_FD OUT_FD   (started by TrackingProcess)
"""
from __future__ import annotations

import importlib
import itertools
import os
import pickle
import subprocess
import sys
import threading
import traceback
from concurrent.futures import Future


class CallError(RuntimeError):
    """A call failed in the tracking process (its traceback is printed there), or the process ended."""


class TrackingProcess:
    """Runs `module:function(*args)` calls in a process of its own, in order; `submit` returns a
    Future of the function's value.

    Example:
        >>> p = TrackingProcess()
        >>> p.submit("os.path:join", "a", "b").result()
        'a/b'
        >>> p.close()
    """

    def __init__(self):
        to_child, self._to_child = os.pipe()
        self._from_child, from_child = os.pipe()
        self._out = os.fdopen(self._to_child, "wb")
        self._futures: dict[int, Future] = {}
        self._seq, self._lock, self.ended = itertools.count(), threading.Lock(), None
        argv = [sys.executable, "-m", "pipeline.tracking_process", str(os.getpid()), str(to_child), str(from_child)]
        started = threading.Event()
        # Started and read by one thread that lives as long as the process: the parent-death
        # signal is tied to the thread that started a child (a Tune trial's thread ends).
        self._reader = threading.Thread(target=self._serve, args=(argv, (to_child, from_child), started),
                                        name="tracking-process", daemon=True)
        self._reader.start()
        started.wait()

    def _serve(self, argv, child_fds, started) -> None:
        try:
            # the same `pipeline` as this process's, wherever it was imported from (a Ray job's working_dir)
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
            self.proc = subprocess.Popen(argv, pass_fds=child_fds, stdin=subprocess.DEVNULL, env=env)
        except OSError as e:
            self.ended = f"the tracking process did not start ({e})"
            return
        finally:
            for fd in child_fds:
                os.close(fd)
            started.set()
        with os.fdopen(self._from_child, "rb") as replies:
            try:
                while True:
                    seq, ok, value = pickle.load(replies)
                    with self._lock:
                        future = self._futures.pop(seq)
                    future.set_result(value) if ok else future.set_exception(CallError(value))
            except (EOFError, OSError, pickle.UnpicklingError):
                pass
        code = self.proc.wait()
        with self._lock:
            self.ended = f"the tracking process ended (exit code {code})"
            pending, self._futures = list(self._futures.values()), {}
        for future in pending:
            future.set_exception(CallError(self.ended))

    def submit(self, function: str, *args) -> Future:
        future = Future()
        with self._lock:
            if self.ended:
                future.set_exception(CallError(self.ended))
                return future
            seq = next(self._seq)
            self._futures[seq] = future
            try:
                pickle.dump((seq, function, args), self._out, protocol=pickle.HIGHEST_PROTOCOL)
                self._out.flush()
            except OSError as e:  # the process is gone; its reader fails what is pending
                self._futures.pop(seq)
                future.set_exception(CallError(f"the tracking process ended ({e})"))
        return future

    def close(self) -> None:
        """After every call sent has run: the process reads the end of its input and exits."""
        with self._lock:
            if not self._out.closed:
                self._out.close()
        self._reader.join()


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the run's process dies (Linux's PR_SET_PDEATHSIG), as a thread dies with it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(0)


def main(parent: int, in_fd: int, out_fd: int) -> None:
    _die_with_parent(parent)
    with os.fdopen(in_fd, "rb") as calls, os.fdopen(out_fd, "wb") as replies:
        while True:
            try:
                seq, function, args = pickle.load(calls)
            except EOFError:  # every call has run and replied: end without the interpreter's teardown
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
            module, name = function.split(":")
            try:
                reply = (seq, True, getattr(importlib.import_module(module), name)(*args))
            except BaseException as e:  # noqa: BLE001 - every error goes back to the run, one line
                traceback.print_exc()
                text = str(e).strip().splitlines()
                reply = (seq, False, f"{type(e).__name__}: {text[0]}" if text else type(e).__name__)
            pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
