"""Exclusive locks on a run folder, so two processes never train one sweep (or one trial) at once.

Two levels, both files under the run folder (harness.layout):

* the sweep lock `<run>/.lock`, held by `run_sweep` (`heurbench sweep`, `heurbench slurm submit --mode ray`) for
  the whole sweep. A second driver on the same sweep folder waits up to `--wait` seconds, then exits 2 with one
  line naming the holder (host, pid, start time, command);
* a trial lock `<run>/.locks/<trial_id>.lock`, held by `harness.train.train` (rank 0 only) while it trains a
  trial, and by a pack for every member. It outlives the driver on purpose: the Ray workers of a killed
  driver keep training for a few seconds, and a re-run's worker for the same trial waits (`TRIAL_WAIT`, with a
  log line) until the old one has exited, then resumes from what it left. Trial locks are not inside
  `trials/<id>/` because a trial that starts afresh removes that folder.

How: `fcntl.flock(LOCK_EX | LOCK_NB)` on a file descriptor kept open while the lock is held. The kernel drops
the lock when the holder dies however it dies (SIGKILL, OOM, node reboot for local disks), so a dead holder
never leaves a stale lock and a re-run takes it over at once: there is nothing to clean up and no pid guessing.
The lock file itself is never deleted (deleting it would let two processes lock two different inodes); the
holder writes its identity into it only for the refusal message, and clears it on release. The descriptor is
close-on-exec (Python's default), so processes a holder starts (torchrun ranks, a local Ray cluster) do not
inherit the lock. Locks are re-entrant within one process (a pack that falls back to training its members
one at a time re-takes locks it already holds).

Shared filesystems: on NFS (v3 with lockd, v4) Linux maps flock to POSIX locks that the server arbitrates, and a
lock of a dead client is dropped when the server notices; on Lustre mounted with `-o flock` it is cluster-wide.
Where flock is refused (Lustre without `flock`, NFS without lockd: ENOLCK/ENOSYS/EOPNOTSUPP/EINVAL), or is
known to be only node-local (Lustre `-o localflock`: set `HEURBENCH_LOCK=file`), the lock is instead the
existence of `<lock>.held`, created with O_EXCL (atomic on NFS v3+ and Lustre) and holding the same identity.
Its staleness is checked by pid: a holder on this host whose pid no longer exists (`os.kill(pid, 0)`) is stale
and taken over; a holder on another host cannot be checked from here, so the refusal says to remove the file
if that process is gone. Released locks in that mode are unlinked.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from harness import confine
from harness.errors import LockError

log = logging.getLogger("heurbench.lock")

TRIAL_WAIT = 60.0  # seconds a trial waits for another process (a killed driver's worker) to let go of it
POLL = 0.2
LOG_EVERY = 15.0
UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}

_held: dict[str, list] = {}  # absolute lock path -> [fd or None (file mode), depth]
_guard = threading.Lock()


def identity() -> dict:
    """Who holds a lock: host, pid, start time and command line (for the refusal message)."""
    cmd = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)) if sys.argv else ""
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(cmd.split())[:120]}


def describe(info: Optional[dict]) -> str:
    if not info:
        return "a process that is just starting (no holder recorded yet)"
    line = f"host {info.get('host')} pid {info.get('pid')} since {info.get('since')}"
    return line + (f" ({info['command']})" if info.get("command") else "")


def read_holder(path: Path) -> Optional[dict]:
    try:
        text = path.read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def file_mode() -> bool:
    return os.environ.get("HEURBENCH_LOCK", "flock") == "file"


def _try_flock(path: Path) -> tuple[Optional[int], Optional[dict]]:
    """(fd, None) when locked; (None, holder) when another process holds it. Raises OSError(UNSUPPORTED)."""
    fd = confine.open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None, read_holder(path)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(identity()).encode(), 0)
    return fd, None


def alive(info: dict) -> bool:
    """False only for a holder on this host whose pid is gone; a holder elsewhere counts as alive."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _try_file(path: Path) -> tuple[bool, Optional[dict]]:
    """File mode: (True, None) when `<path>.held` was created; (False, holder) when a live holder has it."""
    held = path.with_name(path.name + ".held")
    for _ in range(3):
        try:
            fd = confine.open_nofollow(held, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            info = read_holder(held)
            if info is None and time.time() - _mtime(held) < 10:
                return False, None  # being written right now
            if info is not None and alive(info):
                return False, info
            log.warning("lock %s: holder %s is gone; taking over", held, describe(info))
            held.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(identity()))
            fh.flush()
            os.fsync(fh.fileno())
        return True, None
    return False, read_holder(held)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _acquire_once(path: Path) -> tuple[bool, Optional[dict]]:
    """Try once; record the lock in `_held` on success."""
    key = str(path)
    if not file_mode():
        try:
            fd, info = _try_flock(path)
        except OSError as err:
            if err.errno not in UNSUPPORTED:
                raise
            log.warning("lock %s: flock unsupported here (%s); using a pid file instead", path, err.strerror)
            os.environ["HEURBENCH_LOCK"] = "file"
        else:
            if fd is not None:
                _held[key] = [fd, 1]
            return fd is not None, info
    ok, info = _try_file(path)
    if ok:
        _held[key] = [None, 1]
    return ok, info


def acquire(path: str | Path, what: str, wait: float = 0.0, hint: str = "") -> Path:
    """Take the lock at `path` (re-entrant in this process), waiting up to `wait` seconds; else LockError."""
    path = confine.writable(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            return path
    deadline, next_log = time.monotonic() + wait, 0.0
    while True:
        with _guard:
            ok, info = _acquire_once(path)
        if ok:
            return path
        now = time.monotonic()
        if now >= deadline:
            where = path.with_name(path.name + ".held") if file_mode() else path
            gone = f"; if that process is gone, remove {where}" if file_mode() and info and alive(info) else ""
            waited = f" (waited {wait:g} s)" if wait > 0 else ""
            raise LockError(f"{what} is in use by {describe(info)}{waited}{gone}" + (f"; {hint}" if hint else ""))
        if now >= next_log:
            log.info("%s is in use by %s; waiting up to %.0f s more", what, describe(info), deadline - now)
            next_log = now + LOG_EVERY
        time.sleep(min(POLL, max(0.0, deadline - now)))


def release(path: str | Path) -> None:
    key = str(Path(os.path.abspath(path)))
    with _guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
        fd = entry[0]
        if fd is None:
            Path(key + ".held").unlink(missing_ok=True)
            return
        try:
            os.ftruncate(fd, 0)  # no stale identity for the next reader; the file itself stays
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextmanager
def hold(path: str | Path, what: str, wait: float = 0.0, hint: str = "") -> Iterator[Path]:
    """Hold the exclusive lock at `path` for the `with` block: taken at once, after waiting up to `wait` seconds
    for its holder to let go, or refused with a one-line LockError naming the holder (`what` says what is
    locked, `hint` what to do)."""
    p = acquire(path, what, wait, hint)
    try:
        yield p
    finally:
        release(p)


@contextmanager
def hold_all(items: list[tuple[Path, str]], wait: float = 0.0, hint: str = "") -> Iterator[None]:
    """Hold several locks (path, what), taken in path order so that two holders of overlapping sets never
    wait on each other in a cycle."""
    taken: list[Path] = []
    try:
        for path, what in sorted(set(items), key=lambda x: str(x[0])):
            taken.append(acquire(path, what, wait, hint))
        yield
    finally:
        for p in reversed(taken):
            release(p)
