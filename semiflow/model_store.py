"""A directory of model versions a sensor serves from: immutable versions, one `current`
pointer, an append-only history of who promoted what, when and why.

    STORE/
      versions/<model_version>/   an artifact directory, read-only once added
          semiflow-model.json, model.safetensors, provenance.json, MANIFEST.json
      CURRENT                      the served version's name (replaced atomically)
      history.jsonl                one JSON object per add / promote / rollback

MANIFEST.json holds every file's sha256 and the version's content hash (sha256 over the sorted
file hashes): `verify` recomputes them, so a version edited after it was added is refused
instead of served. A version's name is the artifact's model_version (`semiflow-<weights
sha256[:12]>` unless the trainer named it), so the name already changes with the weights.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from semiflow.detector.artifact import load_artifact, sha256_file
from semiflow.detector.permissions import refuse_world_writable

VERSIONS = "versions"
CURRENT = "CURRENT"
HISTORY = "history.jsonl"
MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class VersionInfo:
    name: str
    path: Path
    content_sha256: str
    added: float
    level: str
    threshold: float | None
    provenance: dict


def _content_hash(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class ModelStore:
    """Versions, the current pointer and the history of one store directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not (self.root / VERSIONS).is_dir():
            raise ValueError(f"{self.root}: not a model store (no {VERSIONS}/; "
                             f"create one with `semiflow models add {self.root} MODEL_DIR`)")
        refuse_world_writable(self.root, "model store")

    @classmethod
    def open_or_create(cls, root: str | os.PathLike) -> ModelStore:
        (Path(root) / VERSIONS).mkdir(parents=True, exist_ok=True)
        return cls(root)

    # ---- reading ------------------------------------------------------------------------
    def path(self, version: str) -> Path:
        p = self.root / VERSIONS / version
        if "/" in version or version.startswith(".") or not (p / MANIFEST).is_file():
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise ValueError(f"{self.root}: no version {version!r} (versions: {known})")
        return p

    def versions(self) -> list[VersionInfo]:
        """Every complete version, oldest first."""
        out = []
        for d in sorted((self.root / VERSIONS).iterdir()):
            if d.name.startswith(".") or not (d / MANIFEST).is_file():
                continue  # an add that did not finish
            m = json.loads((d / MANIFEST).read_text())
            meta = json.loads((d / "semiflow-model.json").read_text())
            thr = (meta.get("threshold") or {}).get("value")
            prov = json.loads((d / "provenance.json").read_text()) \
                if (d / "provenance.json").is_file() else {}
            out.append(VersionInfo(d.name, d, m["content_sha256"], float(m["added"]),
                                   meta.get("level", "packet"), thr, prov))
        return sorted(out, key=lambda v: v.added)

    def current(self) -> str | None:
        p = self.root / CURRENT
        return p.read_text().strip() or None if p.is_file() else None

    def current_path(self) -> Path:
        """The served version's directory, verified; ValueError when there is none."""
        cur = self.current()
        if cur is None:
            raise ValueError(f"{self.root}: no current version (promote one with `semiflow "
                             f"models promote {self.root} VERSION --reason ...`)")
        self.verify(cur)
        return self.path(cur)

    def history(self) -> list[dict]:
        p = self.root / HISTORY
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def verify(self, version: str) -> None:
        """ValueError unless every file is the one that was added."""
        d = self.path(version)
        m = json.loads((d / MANIFEST).read_text())
        present = {p.name for p in d.iterdir() if p.name != MANIFEST}
        if present != set(m["files"]):
            raise ValueError(f"model store: version {version} changed after it was added "
                             f"(files {sorted(present ^ set(m['files']))})")
        for name, digest in m["files"].items():
            if sha256_file(d / name) != digest:
                raise ValueError(f"model store: version {version} changed after it was added "
                                 f"({name} has another sha256)")
        if _content_hash(m["files"]) != m["content_sha256"]:
            raise ValueError(f"model store: version {version}'s manifest is inconsistent")

    # ---- writing ------------------------------------------------------------------------
    def add(self, artifact_dir: str | os.PathLike, reason: str = "",
            who: str | None = None) -> str:
        """Copy an artifact in as a new read-only version; adding the same content again
        is a no-op, another content under an existing name an error."""
        src = Path(artifact_dir)
        art = load_artifact(src)  # refuses what could not be served
        name = art.model_version
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"{src}: model_version {name!r} cannot name a store version")
        files = {p.name: sha256_file(p) for p in sorted(src.iterdir())
                 if p.is_file() and p.name != MANIFEST}
        digest = _content_hash(files)
        dest = self.root / VERSIONS / name
        if dest.exists():
            old = json.loads((dest / MANIFEST).read_text())["content_sha256"] \
                if (dest / MANIFEST).is_file() else None
            if old == digest:
                return name
            raise ValueError(f"model store: version {name} exists with other content")
        tmp = Path(tempfile.mkdtemp(dir=self.root / VERSIONS, prefix=f".{name}."))
        for f in files:
            shutil.copyfile(src / f, tmp / f)
        (tmp / MANIFEST).write_text(json.dumps(
            {"files": files, "content_sha256": digest, "added": time.time(),
             "source": str(src.resolve())}, indent=2) + "\n")
        for p in tmp.iterdir():
            os.chmod(p, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(tmp, 0o555)
        os.rename(tmp, dest)  # atomic: a reader sees the whole version or none
        self._log("add", name, reason, who)
        return name

    def promote(self, version: str, reason: str, who: str | None = None) -> str | None:
        """Make `version` current; returns the version it replaced."""
        self.verify(version)
        load_artifact(self.path(version))
        previous = self.current()
        _write_atomic(self.root / CURRENT, version + "\n")
        self._log("promote", version, reason, who, previous=previous)
        return previous

    def rollback(self, reason: str, who: str | None = None, to: str | None = None) -> str:
        """Back to the version that was current when the present one was promoted (or to
        `to`): repeated rollbacks walk back through the promotions."""
        cur = self.current()
        if to is None:
            promos = [h for h in self.history()
                      if h["action"] == "promote" and h["version"] == cur]
            if cur is None or not promos or not promos[-1].get("previous"):
                raise ValueError(f"{self.root}: nothing to roll back to (current: {cur}); "
                                 f"name a version with --to")
            to = promos[-1]["previous"]
        self.verify(to)
        load_artifact(self.path(to))
        _write_atomic(self.root / CURRENT, to + "\n")
        self._log("rollback", to, reason, who, previous=cur)
        return to

    def _log(self, action: str, version: str, reason: str, who: str | None,
             **extra) -> None:
        entry = {"ts": time.time(), "action": action, "version": version,
                 "who": who or getpass.getuser(), "reason": reason, **extra}
        with open(self.root / HISTORY, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
