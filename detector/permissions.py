"""Refuse files anyone on the host may change: a model or an allow-list decides what is
flagged, so a world-writable one lets any local user blind the detector."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def refuse_world_writable(path: str | os.PathLike, what: str) -> None:
    """ValueError (one line, with the fix) if path, or its directory without the sticky
    bit (anyone could replace the file), is writable by everyone."""
    p = Path(path)
    for q, why in ((p, "is"), (p.parent, "lies in a directory that is")):
        try:
            mode = q.stat().st_mode
        except OSError:
            continue  # missing: the reader says so in its own words
        sticky_dir = stat.S_ISDIR(mode) and mode & stat.S_ISVTX and q != p
        if mode & stat.S_IWOTH and not sticky_dir:
            raise ValueError(f"{what} {p} {why} world-writable (mode {stat.filemode(mode)}): "
                             f"any local user could change it; run: chmod o-w {q}")
