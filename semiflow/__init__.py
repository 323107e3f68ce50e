"""semiflow: deep anomaly detection on the first packets of every connection."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

# pyproject.toml maps these top-level source folders into the package (package-dir): a wheel
# holds them as semiflow/detector etc. A source checkout does not, so when this file is
# imported from one (`python -m semiflow` in the repository root with a regular install, or
# no install at all) the finder below resolves them to the sibling folders: the wheel and the
# source tree then import the same names from any working directory.
MAPPED_SUBPACKAGES = ("detector", "plugin", "training")


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds semiflow.detector/.plugin/.training in the checkout's top-level folders."""

    def __init__(self, root: Path):
        self._dirs = {f"{__name__}.{n}": root / n for n in MAPPED_SUBPACKAGES}

    def find_spec(self, fullname, path=None, target=None):
        d = self._dirs.get(fullname)
        if d is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, d / "__init__.py", submodule_search_locations=[str(d)])


def _in_source_tree() -> Path | None:
    """The checkout root when this package is imported from its source folder, else None."""
    here = Path(__file__).resolve().parent
    root = here.parent
    if (here / MAPPED_SUBPACKAGES[0]).is_dir() or not (root / "pyproject.toml").is_file():
        return None  # installed (the wheel holds the subpackages) or not our layout
    if all((root / n / "__init__.py").is_file() for n in MAPPED_SUBPACKAGES):
        return root
    return None


_root = _in_source_tree()
if _root is not None and not any(isinstance(f, _SourceTreeFinder) for f in sys.meta_path):
    sys.meta_path.append(_SourceTreeFinder(_root))
