"""File helpers shared by every stage: clear input errors, atomic output, resumable JSONL."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A user-fixable problem with an input: the message is one line naming the file, the row and the fix."""


class ConfigError(ValueError):
    """A bad configuration value: the message names the option and the accepted values."""


def require_file(path: str | os.PathLike, what: str, fix: str = "") -> Path:
    """Return ``path`` as a Path, or raise DataError if it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        hint = f"; {fix}" if fix else ""
        raise DataError(f"{what} not found: {p}{hint}")
    return p


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_jsonl(path: str | os.PathLike, what: str = "JSONL file", allow_torn_tail: bool = False) -> list[dict]:
    """Read every row of a JSONL file.

    Raises DataError naming the file and the 1-based line of the first malformed row. With
    ``allow_torn_tail`` a malformed *last* line (an interrupted append) is ignored instead.
    """
    return list(iter_jsonl(path, what, allow_torn_tail))


def iter_jsonl(path: str | os.PathLike, what: str = "JSONL file", allow_torn_tail: bool = False) -> Iterator[dict]:
    """Stream the rows of a JSONL file (one line in memory at a time); errors as for ``read_jsonl``."""
    p = require_file(path, what)
    torn: DataError | None = None  # a malformed line is a torn tail only if nothing follows it
    with p.open("r", encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if torn is not None:
                raise torn
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                torn = DataError(f"{p}:{i}: malformed JSON ({e.msg}); fix or delete this line")
                if allow_torn_tail:
                    continue
                raise torn from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{i}: expected a JSON object per line, got {type(row).__name__}")
            yield row


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    p = require_file(path, what)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: malformed JSON ({e.msg})") from None


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file beside ``path``; on success it is fsynced and renamed over ``path``.

    A crash or exception leaves any previous ``path`` untouched and no partial file behind.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; published files get the usual permissions
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


class JsonlAppender:
    """Append-only JSONL output for resumable stages.

    Opening an existing file drops a torn last line (an interrupted write) so that appends stay valid,
    and exposes the rows already there so that a rerun can skip finished work.
    """

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        if self.path.exists():
            good_bytes = 0
            with self.path.open("rb") as f:
                for raw in f:
                    try:
                        row = json.loads(raw)
                    except json.JSONDecodeError:
                        break  # torn tail: everything from here is rewritten
                    if not raw.endswith(b"\n"):
                        break
                    self.rows.append(row)
                    good_bytes += len(raw)
            if good_bytes != self.path.stat().st_size:
                with self.path.open("r+b") as f:
                    f.truncate(good_bytes)
        self.done = {str(r[key]) for r in self.rows if key in r}
        self._f = self.path.open("a", encoding="utf-8")

    def append(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
