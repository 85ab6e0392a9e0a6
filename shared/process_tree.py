"""Stopping a started process and every process it started, the way Kubernetes stops a pod:
SIGTERM to the main process, a grace period, then SIGKILL to whatever of its tree is left.

A tree is a process started as the leader of a new session (`start_new_session=True`), so
its process group holds every descendant that did not start a session of its own, even after
its parent died and it was re-parented to init; descendants seen while it ran are
remembered too, for those that left the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import psutil

# Between two looks at whether the processes are gone.
POLL_S = 0.1
# After SIGKILL the kernel ends a process, stopped or not, at once: this only bounds a
# process stuck in uninterruptible sleep (a hung disk), which nothing can end sooner.
KILL_WAIT_S = 5.0


def is_gone(process: psutil.Process) -> bool:
    """True once `process` has exited (a zombie has: only its exit status is left)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for pid in psutil.pids():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(pid) == pgid:
                members.append(psutil.Process(pid))
    return members


class ProcessTree:
    """A process started in a session of its own, and everything it starts."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pgid = popen.pid
        self._seen: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            leader = psutil.Process(popen.pid)
            self._seen[leader.pid] = leader

    @classmethod
    def start(cls, command: Sequence[str], env: Mapping[str, str] | None = None) -> ProcessTree:
        """`command` started as the leader of a new session (its own process group)."""
        return cls(subprocess.Popen(command, env=env, start_new_session=True))

    def note(self) -> None:
        """Remember the descendants alive now: a process that leaves the group later (a new
        session of its own) is still stopped."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.popen.pid).children(recursive=True):
                self._seen.setdefault(child.pid, child)

    def processes(self) -> list[psutil.Process]:
        """Every process of the tree not gone yet: the leader, its descendants, the members
        of its process group and the descendants remembered by `note`."""
        self.note()
        for member in _group_members(self.pgid):
            self._seen.setdefault(member.pid, member)
        # psutil.Process compares by pid and start time: a reused pid is not a member.
        self._seen = {pid: p for pid, p in self._seen.items() if not is_gone(p)}
        return list(self._seen.values())

    def terminate(self) -> None:
        """SIGTERM to the leader only: it stops its own children (a signal to the whole group
        would reach Dramatiq's workers twice, and a second SIGTERM makes them exit at once)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the process group and to every process of the tree."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                process.kill()

    def reap(self, timeout_s: float = 0.0) -> None:
        """Collect the leader's exit status once it has exited (no zombie left behind)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout_s)


def _wait_gone(trees: Iterable[ProcessTree], deadline: float, hurry: threading.Event) -> bool:
    """Wait until no process of `trees` is left, `deadline` (monotonic) passes or `hurry` is
    set; whether none is left."""
    while True:
        for tree in trees:
            tree.reap()
        if not any(tree.processes() for tree in trees):
            # A leader that exited since the reap above is a zombie: collected at once.
            for tree in trees:
                tree.reap(KILL_WAIT_S)
            return True
        if time.monotonic() >= deadline or hurry.is_set():
            return False
        hurry.wait(POLL_S)


def stop_trees(
    trees: Sequence[ProcessTree], grace_s: float, hurry: threading.Event | None = None
) -> bool:
    """Stop every tree: SIGTERM to each leader, up to `grace_s` (cut short when `hurry` is
    set) for every process to exit, then SIGKILL to what is left; whether all are gone."""
    hurry = hurry or threading.Event()
    for tree in trees:
        tree.note()
        tree.terminate()
    if _wait_gone(trees, time.monotonic() + grace_s, hurry):
        return True
    for tree in trees:
        tree.kill()
    return _wait_gone(trees, time.monotonic() + KILL_WAIT_S, threading.Event())


def stop_processes(processes: Sequence[psutil.Process], grace_s: float) -> bool:
    """SIGTERM to each of `processes`, up to `grace_s` for them to exit, then SIGKILL;
    whether all are gone. For a server that was not started as a tree of ours."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    for wait_s, last in ((grace_s, False), (KILL_WAIT_S, True)):
        deadline = time.monotonic() + wait_s
        while any(not is_gone(p) for p in processes) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if all(is_gone(p) for p in processes):
            return True
        if not last:
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    process.kill()
    return False
