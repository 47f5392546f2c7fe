"""File helpers shared by every stage: clear input errors, atomic output, resumable JSONL."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A user-fixable problem with an input: the message is one line naming the file, the row and the fix."""


class ConfigError(ValueError):
    """A bad configuration value: the message names the option and the accepted values."""


class OutputError(RuntimeError):
    """An output could not be written for a reason outside the program (a full disk, a quota): the message is one
    line naming the file and the fix; nothing half-written was published."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _as_output_error(e: BaseException, path: Path) -> BaseException:
    """``e`` as an OutputError naming ``path`` when it is a full disk or quota, else ``e`` itself."""
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
        return OutputError(f"{path}: {os.strerror(e.errno)} while writing it; free space on {path.parent} or write "
                           f"the output elsewhere (nothing was published; an earlier {path.name}, if any, is kept)")
    return e


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


def _utf8_error(p: Path, data: bytes, e: UnicodeDecodeError) -> DataError:
    line = data.count(b"\n", 0, e.start) + 1
    return DataError(f"{p}:{line}: bytes that are not UTF-8 at byte offset {e.start} ({e.reason}); "
                     "re-encode the file as UTF-8")


def read_text(path: str | os.PathLike, what: str = "text file") -> str:
    """The UTF-8 text of an input file; raises DataError naming the file, line and byte offset of bad bytes."""
    p = require_file(path, what)
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(p, data, e) from None


def read_jsonl(path: str | os.PathLike, what: str = "JSONL file", allow_torn_tail: bool = False) -> list[dict]:
    """Read every row of a JSONL file.

    Raises DataError naming the file and the 1-based line of the first malformed row (bad JSON, bytes that are
    not UTF-8, or not an object). With ``allow_torn_tail`` a malformed *last* line (an interrupted append) is
    ignored instead; a malformed line anywhere else is still an error.
    """
    return _scan_jsonl(require_file(path, what), allow_torn_tail)[0]


def iter_jsonl(path: str | os.PathLike, what: str = "JSONL file", allow_torn_tail: bool = False) -> Iterator[dict]:
    """Stream the rows of a JSONL file (one line in memory at a time); errors as for ``read_jsonl``."""
    for row, _ in _jsonl_rows(require_file(path, what), allow_torn_tail):
        yield row


def _jsonl_rows(p: Path, allow_torn_tail: bool) -> Iterator[tuple[dict, int]]:
    """Stream ``(row, end byte offset)`` of every row of ``p``, one line in memory at a time. A malformed line is
    tolerated only as the file's last line, without its newline, with ``allow_torn_tail`` (an interrupted append):
    its error is held back and raised as soon as another line follows it."""
    offset = 0
    held: DataError | None = None
    with p.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            if held is not None:
                raise held
            start, offset = offset, offset + len(raw)
            try:
                text = raw.decode("utf-8")
                row = json.loads(text) if text.strip() else None
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                if isinstance(e, UnicodeDecodeError):
                    error = DataError(f"{p}:{i}: bytes that are not UTF-8 at byte offset {start + e.start} "
                                      f"({e.reason}); fix or delete this line")
                else:
                    error = DataError(f"{p}:{i}: malformed JSON ({e.msg}); fix or delete this line")
                # a torn append never ends with its newline: a complete bad line is bad data, not an interruption
                if not allow_torn_tail or raw.endswith(b"\n"):
                    raise error from None
                held = error
                continue
            if row is not None and not isinstance(row, dict):
                raise DataError(f"{p}:{i}: expected a JSON object per line, got {type(row).__name__}")
            if row is not None:
                yield row, offset


def _scan_jsonl(p: Path, allow_torn_tail: bool) -> tuple[list[dict], int]:
    """The rows of ``p`` and the byte length of its valid part (shorter than the file only for a torn tail)."""
    rows: list[dict] = []
    good = 0
    for row, end in _jsonl_rows(p, allow_torn_tail):
        rows.append(row)
        good = end
    if not allow_torn_tail:
        good = p.stat().st_size
    return rows, good


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON input file; DataError (file, line, fix) for bad bytes or bad JSON."""
    p = Path(path)
    text = read_text(p, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(f"{p}: JSON nested too deeply to read (deeper than Python's recursion limit); check how "
                        "the file was built") from None


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
        os.chmod(tmp, _published_mode()[1])  # mkstemp creates 0600; published files get the usual permissions
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        error = _as_output_error(e, p)
        if error is e:
            raise
        raise error from None


def _published_mode() -> tuple[int, int]:
    """(directory mode, file mode) under the current umask: temporary files and directories are private (0600 /
    0700); what is published gets the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask, 0o666 & ~umask


TMP_PREFIX = ".tmp-"  # a path being written: not complete, removed by whoever finds it at the next start
TRASH_PREFIX = ".trash-"  # a path being deleted: never mistaken for a complete one


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the renames inside ``directory`` durable (best effort: some filesystems refuse a directory fsync)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_path(path: str | os.PathLike) -> None:
    """Delete a published file, directory or symlink so that a crash never leaves a half-deleted directory that
    looks complete: a directory is renamed to a hidden trash name first, then deleted."""
    p = Path(path)
    if not (p.exists() or p.is_symlink()):
        return
    if p.is_symlink() or not p.is_dir():
        p.unlink()
        return
    trash = p.with_name(f"{TRASH_PREFIX}{p.name}-{uuid.uuid4().hex[:8]}")
    os.replace(p, trash)
    shutil.rmtree(trash, ignore_errors=True)


def publish_path(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename a completely written file or directory ``tmp`` to ``final``, replacing an older ``final``: readers see
    the old one, then (after a moment without any, for a directory) the new one, never a partial one."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.is_dir() and not final.is_symlink():  # os.replace replaces a file in one step, not a directory
        old = final.with_name(f"{TRASH_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    elif final.is_symlink() or (final.exists() and tmp.is_dir()):
        final.unlink()
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def point_link(link: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make ``link`` a relative symlink to ``target`` (the two may move together), switched atomically: readers
    see the old or the new target."""
    link, target = Path(link), Path(target)
    tmp = link.with_name(f"{TMP_PREFIX}{link.name}-{uuid.uuid4().hex[:8]}")
    os.symlink(os.path.relpath(target, link.parent), tmp)
    if link.is_dir() and not link.is_symlink():  # a real directory in its place (e.g. written by another tool)
        remove_path(link)
    os.replace(tmp, link)
    fsync_dir(link.parent)


@contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``path`` to fill; on success it is renamed to ``path``.

    The project's one way to publish a directory (exports, cached assets, checkpoints through ``publish_path``): a
    crash or exception leaves any previous ``path`` untouched and no partial directory under its name.
    ``replace``: an existing ``path`` is replaced (``publish_path``); otherwise an existing ``path`` (another
    process published first) is kept and the new one discarded.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
    try:
        try:
            yield tmp
        except OSError as e:
            error = _as_output_error(e, p)
            if error is e:
                raise
            raise error from None
        dir_mode, file_mode = _published_mode()
        os.chmod(tmp, dir_mode)
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, file_mode)
        if replace:
            publish_path(tmp, p)
        else:
            try:
                os.replace(tmp, p)
            except OSError:
                if not p.is_dir():
                    raise
                # another process published first: keep its directory
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
    and exposes the rows already there so that a rerun can skip finished work. Any other bad line raises
    DataError naming the file and line (the file is left untouched).
    """

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        if self.path.exists():
            # only a torn LAST line is dropped; a bad line before it raises DataError and the file stays as it is,
            # so no valid row after it is ever discarded
            self.rows, good_bytes = _scan_jsonl(self.path, allow_torn_tail=True)
            with self.path.open("r+b") as f:
                if good_bytes != self.path.stat().st_size:
                    f.truncate(good_bytes)
                elif good_bytes:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # a complete last row without its newline: appends start a line
                        f.write(b"\n")
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
