"""Atomic file writes (temp file in the same folder + rename): a killed run never leaves half a file."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from harness import confine


UMASK = os.umask(0)
os.umask(UMASK)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, then rename tmp over `path` (same filesystem, so atomic). A write the filesystem
    refuses (read-only, no permission, full) raises an OSError of one line naming `path` (`write_failed`); under a
    sweep folder, a symbolic link at `path` or on the way out of the folder is refused (`confine.writable`)."""
    path = confine.writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_failed(path, err) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the file the usual mode
    try:
        write(tmp)
        confine.writable(path)  # a link planted while writing is refused, not replaced by the file
        os.replace(tmp, path)
        return path
    except BaseException as err:
        full = isinstance(err, RuntimeError) and free_bytes(path.parent) < FULL  # torch.save: "unexpected pos ..."
        if not (isinstance(err, OSError) or full):
            Path(tmp).unlink(missing_ok=True)
            raise
        err.__traceback__ = None  # the failed writer's frames hold the temp file open: close it to free its space
        Path(tmp).unlink(missing_ok=True)
        failed = write_failed(path, OSError(errno.ENOSPC, "No space left on device") if full else err)
    raise failed  # outside the handler: no chained traceback holds the temp file either


FULL = 1 << 20  # a failed write with less free space than this (1 MiB) ran out of space


def free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return -1


def write_failed(path: Path, err: OSError) -> OSError:
    """`err` from writing `path` as one line naming the path (and, for a full disk, the free space left there),
    of the same OSError subclass (PermissionError for EACCES)."""
    why = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        usage = shutil.disk_usage(existing(path.parent))
        why += f" ({fmt_bytes(usage.free)} free of {fmt_bytes(usage.total)} on that filesystem)"
    elif err.errno == errno.EROFS:
        why += " (the output folder is on a read-only filesystem; choose another with --out)"
    elif err.errno in (errno.EACCES, errno.EPERM):
        why += " (no permission to write there; choose another output folder with --out)"
    return OSError(err.errno, f"cannot write {path}: {why}")


def existing(folder: Path) -> Path:
    """`folder` or its nearest existing parent."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=True)))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_parquet(path: str | Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def save_torch(path: str | Path, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
