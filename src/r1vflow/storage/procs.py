"""Background server processes: start in their own session, recognise, stop, free ports.

A process is "ours" only while it runs (not a zombie) and its command line contains every given
needle (for the stack: the stack directory's absolute path), so a recycled pid is never signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

# Popen objects of processes this interpreter started: kept so they can be reaped (no zombies,
# no ResourceWarning) when the same process stops them, as tests do.
_CHILDREN: dict[int, subprocess.Popen] = {}


class StackError(RuntimeError):
    """A local server could not be started, inspected or stopped."""


def spawn(
    cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start `cmd` detached (new session) with stdout+stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {cmd[0]} ====\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )  # fmt: skip
    _CHILDREN[proc.pid] = proc
    return proc


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file (or a note that it is missing)."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def read_pid(path: Path) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")


def is_ours(pid: int, needles: Sequence[str]) -> bool:
    """True when `pid` runs (not a zombie) and its command line contains every needle."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return all(n in cmdline for n in needles)


def find_ours(needles: Sequence[str]) -> list[int]:
    """Every running process whose command line holds every needle, as its group leader when
    that leader is ours too (stopping the leader stops the group)."""
    found = set()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid != os.getpid() and is_ours(proc.pid, needles):
            try:
                leader = os.getpgid(proc.pid)
            except ProcessLookupError:
                continue
            found.add(leader if leader != proc.pid and is_ours(leader, needles) else proc.pid)
    return sorted(found)


@contextmanager
def dir_lock(path: Path, what: str, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive flock on `path` inside the block, waiting at most `timeout_s` for
    another holder (StackError naming it). The kernel drops it when the holder exits."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise StackError(f"{what} is busy ({holder} holds {path}); wait for it "
                                     "to finish and run the command again") from None
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield


def _gone(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is not None
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _group_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop(
    pid: int, needles: Sequence[str], timeout_s: float = 20.0, sig: int = signal.SIGTERM
) -> bool:
    """Stop process `pid` and its process group if it is ours; SIGKILL after `timeout_s`.

    Returns False (and signals nothing) when the pid is not ours.
    """
    if not is_ours(pid, needles):
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            _CHILDREN.pop(pid)
        return False
    try:
        group = os.getpgid(pid) == pid  # we start servers as session (and group) leaders
    except ProcessLookupError:
        return False
    _signal(pid, sig, group)
    deadline = time.monotonic() + timeout_s
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _gone(pid):
        _signal(pid, signal.SIGKILL, group)
    if group:  # children that outlived their leader (e.g. web-server workers)
        for member in _group_members(pid):
            _signal(member, signal.SIGKILL, False)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=10)
    return True


def port_free(port: int) -> bool:
    """True when a server could listen on 127.0.0.1:`port` now.

    SO_REUSEADDR as servers set it: connections of a stopped server lingering in TIME_WAIT do
    not make its port look taken (a live listener still does).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int] | None = None) -> int:
    """A loopback TCP port the kernel reports free, not in `taken`."""
    taken = taken or set()
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port
    raise StackError("no free loopback port found")


def reuse_or_free(preferred: int | None, taken: set[int]) -> int:
    """`preferred` when it is free and not taken, else a fresh free port."""
    if preferred and preferred not in taken and port_free(preferred):
        return preferred
    return free_port(taken)
