"""Requests in the background, as mcli's SDK makes them: futures on a pool of threads, and the
ones a caller protects carried through a SIGTERM.

mcli's ``update_run_metadata(..., future=True, protect=True)`` is how a training run's logger
(Composer's ``MosaicMLLogger``) sends its last metadata while the run is being stopped: the
platform sends SIGTERM, and the last flush must still reach the server. So, as mcli does:
- every call is a future on one shared pool (``submit``); a caller that does not ask for the
  future waits for it (with its timeout);
- the first protected future installs a SIGTERM handler (only the main thread can install one;
  elsewhere the future runs unprotected, with a warning). On SIGTERM it cancels the futures not
  yet started that are not protected, waits for every protected one to finish, puts the
  previous handler back and sends SIGTERM again, so the process ends as it would have.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")
#: As many requests at once as mcli's SDK sends.
WORKERS = 10
log = logging.getLogger(__name__)

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _Background:
    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        # Reentrant: the SIGTERM handler runs on the main thread, maybe inside ``submit``.
        self._lock = threading.RLock()
        self._protected: set[Future[Any]] = set()
        self._unprotected: set[Future[Any]] = set()
        self._installed = False

    def submit(self, work: Callable[[], T], *, protect: bool = False) -> Future[T]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="mcli-sdk")
            if protect:
                self._install()
            future = self._pool.submit(work)
            (self._protected if protect else self._unprotected).add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._protected.discard(future)
            self._unprotected.discard(future)

    def _install(self) -> None:
        if self._installed:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "a protected request was made off the main thread, where no SIGTERM handler "
                "can be installed: it is not protected from SIGTERM"
            )
            return
        previous: _Handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda signum, frame: self._on_sigterm(previous))
        self._installed = True

    def _on_sigterm(self, previous: _Handler) -> None:
        try:
            with self._lock:
                unprotected, protected = list(self._unprotected), list(self._protected)
            for future in unprotected:
                future.cancel()  # only those not started yet
            if protected:
                log.debug("SIGTERM: waiting for %d protected requests", len(protected))
                wait(protected)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            self._installed = False
            os.kill(os.getpid(), signal.SIGTERM)


_background = _Background()


def submit(work: Callable[[], T], *, protect: bool = False) -> Future[T]:
    """``work()`` on the SDK's pool of threads; with ``protect``, carried through a SIGTERM."""
    return _background.submit(work, protect=protect)
