"""Child processes that die with their parent, even when the parent is killed with SIGKILL.

Nothing in the standard library or in vLLM does this: multiprocessing children, ``ProcessPoolExecutor`` workers
and vLLM's ``EngineCore`` process are reparented to PID 1 and keep running (with their memory) when the stage that
started them is killed with ``kill -9``. ``die_with_parent()``, called first thing in the child, arms two
independent guards:

- Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``): the kernel signals the child the moment its parent
  exits. The kernel ties it to the parent *thread* that started the child, so children are started from the
  parent's main thread (every caller here does);
- a watchdog thread that polls ``os.getppid()`` and exits the child when the parent pid changes (any POSIX system,
  and a backstop if the signal is not delivered).

With ``kill_group=True`` the child first becomes the leader of a new process group, and on its parent's death it
kills the whole group, so grandchildren it started (vLLM's engine core and workers) go with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``). Unlike the
    watcher thread of ``die_with_parent`` it survives ``exec``, so it also serves as a ``preexec_fn`` of a child
    process. Returns whether it was set (False off Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except OSError:
        return False


def _kill_own_group() -> None:
    try:
        os.killpg(os.getpgrp(), signal.SIGKILL)  # this process is in the group too
    finally:
        os._exit(1)


def die_with_parent(kill_group: bool = False, poll_s: float = 0.5) -> None:
    """Exit this process (and, with ``kill_group``, its whole new process group) when its parent dies."""
    parent = multiprocessing.parent_process()
    parent_pid = parent.pid if parent is not None and parent.pid else os.getppid()
    if kill_group:
        try:
            os.setpgid(0, 0)
        except OSError:  # already a group leader (or a session leader): the group is ours either way
            pass

    if kill_group:
        # a catchable signal, so that the handler can take the grandchildren down first
        signal.signal(signal.SIGTERM, lambda signum, frame: _kill_own_group())
        set_parent_death_signal(signal.SIGTERM)
    else:
        set_parent_death_signal(signal.SIGKILL)
    die = _kill_own_group if kill_group else (lambda: os._exit(1))
    if os.getppid() != parent_pid:  # the parent died before the guards were armed
        die()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                die()

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def kill_process_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (a child started with ``die_with_parent(kill_group=True)``)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
