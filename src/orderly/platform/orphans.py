"""A child process that must not outlive its parent asks the kernel to signal it when the parent dies.

Linux's ``prctl(PR_SET_PDEATHSIG)`` delivers a signal to a process the moment the thread that created it exits, even
when the parent was killed with -9 and had no chance to clean up. granian's HTTP workers and the instances of
``orderly sums api --instances N`` use it, so killing an API's main process never leaves a worker serving its port.
On other systems this is a no-op (the project runs on Linux; see docs/operations.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def die_with_parent(sig: int = signal.SIGKILL, *, parent_pid: int | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies.

    ``parent_pid`` is the parent this process was started by: when it already died before the request took effect
    (this process was re-parented), the signal is raised right away instead of never.
    """
    libc = _libc()
    if libc is None:
        return
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def dying_with_this_process(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when this process dies.

    libc is loaded here, in the parent, so the child runs nothing between fork and exec but the prctl call itself.
    """
    _libc()
    return functools.partial(die_with_parent, sig, parent_pid=os.getpid())
