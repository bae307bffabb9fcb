"""Failing case descriptions kept between runs and replayed first (issue 10 section 3).

Hypothesis ignores its own example database for seeded and derandomized runs (parity's pr and
bisect profiles are both), so parity keeps one itself: the final failing case description of a
property under the key `parity:{op}:{impl}:{prop}:{device}`, one JSON file per description in
a folder per key (`<dir>/<sha256 of the key>/`, the key in `key.txt`). `drive` replays up to
MAX_REPLAY saved descriptions of its key first (explicit examples), deletes those that no
longer fail, and saves the new failure.

Files are data: read with the bounds of `parity.campaign.safefile` (a regular file in its
folder, 1 MiB at most, nesting bounded); a bad file is skipped (and removed), never an error
of the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

DEFAULT_DIR = os.path.join(".hypothesis", "parity")
MAX_REPLAY = 10
OFF = ("", "none", "off", "false", "0")


def key_for(op: str, impl: str, prop: str, device: str) -> str:
    return f"parity:{op}:{impl}:{prop}:{device}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def _canon(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, default=repr)


class ExampleStore:
    """A folder of failing case descriptions (see the module's doc)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ExampleStore({str(self.path)!r})"

    def _folder(self, key: str) -> Path:
        return self.path / _digest(key)

    def fetch(self, key: str, limit: int = MAX_REPLAY) -> list[dict]:
        """Up to `limit` saved descriptions of `key`, the most recent first."""
        from parity.campaign.safefile import MAX_JSON, UnsafeFile, loads_json, read_bounded

        folder = self._folder(key)
        try:
            files = [p for p in folder.iterdir() if p.name.startswith("meta-")]
        except OSError:
            return []
        files.sort(key=lambda p: _mtime(p), reverse=True)
        out = []
        for p in files[:limit]:
            try:
                meta = loads_json(read_bounded(p, limit=MAX_JSON, folder=folder), where=str(p))
            except (UnsafeFile, UnicodeError, OSError):
                meta = None
            if not isinstance(meta, dict):
                with contextlib.suppress(OSError):
                    p.unlink()
                continue
            out.append(meta)
        return out

    def save(self, key: str, meta: dict) -> None:
        folder = self._folder(key)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "key.txt").write_text(key + "\n", encoding="utf-8")
            text = _canon(meta)
            tmp = folder / f".tmp-{os.getpid()}"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, folder / f"meta-{_digest(text)}.json")
        except OSError:
            pass  # a read-only folder: no replay next time, never a failed run

    def delete(self, key: str, meta: dict) -> None:
        with contextlib.suppress(OSError):
            (self._folder(key) / f"meta-{_digest(_canon(meta))}.json").unlink()


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def store_from(database, env: str | None = None) -> ExampleStore | None:
    """An `ExampleStore` from a setting: a directory, an ExampleStore, True or "default" (the
    default folder, or `env`'s value when set), None/False/"off"/"none" (none)."""
    if isinstance(database, ExampleStore):
        return database
    if database is True or database == "default":
        database = env if env is not None else DEFAULT_DIR
    if database is None or database is False:
        return None
    if not isinstance(database, (str, os.PathLike)):
        raise TypeError(
            f"database: expected a directory, 'off' or None, got {type(database).__name__} "
            "(parity keeps its own store: Hypothesis ignores a database for seeded runs)"
        )
    text = os.fspath(database)
    if text.strip().lower() in OFF:
        return None
    return ExampleStore(text)
