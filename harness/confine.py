"""Reads and writes under a sweep folder stay inside it: a symbolic link planted there never leads outside.

A sweep folder heurbench made holds a marker (`MARKER`, written by `claim`). For a path under a marked folder
(its root: the outermost marked folder among the path's lexical parents, so a marker planted further down
cannot move the root), `writable` refuses a symbolic link at the path itself and a folder on the way that
resolves outside the root; `readable` refuses a path that resolves outside it. Links that stay inside the root
are allowed. A path under no marked folder is the user's own choice (`--out`, `model.init_from`) and unchecked.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

from harness.errors import ConfigError

MARKER = ".heurbench-sweep"  # in <root>/<sweep>/: this folder is heurbench's (content: the sweep's name)


class UnsafePathError(ConfigError):
    """A path under a results root that a planted symbolic link would take outside it (one line, exit 2)."""


def root_of(path: str | Path) -> Optional[Path]:
    """The outermost marked sweep folder among `path`'s lexical parents (no link resolved), else None."""
    parts = Path(os.path.abspath(path)).parts
    for i in range(1, len(parts)):
        folder = Path(*parts[:i])
        if is_regular(folder / MARKER):
            return folder
    return None


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def inside(path: str | Path, root: str | Path, what: str = "") -> Path:
    """`path` with every link resolved; an UnsafePathError naming `path` and its first link unless that lies
    inside `root` (resolved too)."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    real, real_root = path.resolve(), root.resolve()
    if real != real_root and real_root not in real.parents:
        below = [p for p in [*reversed(path.parents), path] if root in p.parents]
        link = next((p for p in below if is_link(p)), path)
        raise UnsafePathError(f"{path}: {what or 'refused'}: {link} is a symbolic link leading outside {root} "
                              f"(to {link.resolve()}); heurbench does not follow it (remove the link)")
    return real


def writable(path: str | Path) -> Path:
    """`path`, checked before heurbench creates or replaces it under a marked sweep folder."""
    path = Path(path)
    root = root_of(path)
    if root is None:
        return path
    if is_link(path):
        raise UnsafePathError(f"{path}: a symbolic link inside results folder {root}; heurbench does not write "
                              f"through links (remove it)")
    inside(nearest_existing(path.parent), root, "not written")
    return path


def readable(path: str | Path) -> Path:
    """`path`, checked before heurbench reads it from a marked sweep folder."""
    root = root_of(path)
    if root is not None and os.path.lexists(path):
        inside(path, root, "not read")
    return Path(path)


def nearest_existing(folder: Path) -> Path:
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def open_nofollow(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """os.open with O_NOFOLLOW after `writable`: a link planted at `path` between the check and the open fails
    the open (ELOOP) instead of being followed."""
    writable(path)
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as err:
        if is_link(Path(path)):
            raise UnsafePathError(f"{path}: a symbolic link; heurbench does not open it (remove it)") from None
        raise


def claim(folder: str | Path, sweep: str) -> None:
    """Mark `folder` as sweep `sweep`'s before the first write into it (an empty or new folder), or check that it
    already is: a folder heurbench did not make (files but no marker) or another sweep's is refused in one line
    and left as it is."""
    from harness.storage import write_text

    folder = Path(folder)
    marker = folder / MARKER
    if is_regular(marker):
        owner = marker.read_text(errors="replace").strip()
        if owner != sweep:
            raise UnsafePathError(f"{folder}: the results of sweep {owner!r} ({MARKER}), not {sweep!r}; choose "
                                  f"another sweep name or --out")
        return
    if os.path.lexists(marker) or is_link(folder) and root_of(folder) is not None:
        raise UnsafePathError(f"{marker if os.path.lexists(marker) else folder}: not a plain file or folder; "
                              f"heurbench does not write there (remove it)")
    if folder.is_dir() and any(folder.iterdir()):
        raise UnsafePathError(f"{folder}: exists and is not a heurbench sweep folder (no {MARKER}); heurbench "
                              f"does not write into a folder it did not make: choose another sweep name or --out "
                              f"(results of heurbench from before markers: `echo {sweep} > {marker}` adopts them)")
    write_text(marker, sweep + "\n")
