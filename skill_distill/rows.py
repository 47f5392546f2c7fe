"""The one reader of source rows (corpora and benchmarks): JSONL, JSON arrays, Parquet, HF datasets.

Rows come out in batches of plain dicts, in source order, so that a stage can hold one batch at a time
(docs/METHOD.md "Idea": the paper's pool is drawn from OpenMathReasoning, 3.2M traces, about 72 GB of text):

- Parquet: a file, a directory (every ``*.parquet`` below it, in sorted path order) or a glob pattern; read with
  ``pyarrow.parquet.ParquetFile.iter_batches(columns=...)`` without read-ahead (``pre_buffer=False``) and with a
  buffered page stream (``buffer_size``), so that the peak memory is one batch of the projected columns plus a
  buffer, flat in the file's and the row group's size (pyarrow's default pre-buffering keeps the column chunks it
  has read in its memory pool: about 1 MB of RAM per MB of file, issue 26).
- JSONL: streamed line by line (``skill_distill.io.iter_jsonl``).
- JSON: one array of objects, read whole (the standard library has no streaming JSON parser; use JSONL or
  Parquet for large corpora).
- Anything else is an HF dataset name, read with ``datasets.load_dataset(..., streaming=True)`` and
  ``select_columns``. That path needs the hub, so the test suite (no hub on the development machines) covers
  the file formats only.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from skill_distill.io import ConfigError, DataError, iter_jsonl, read_json

FILE_SUFFIXES = {".jsonl", ".json", ".parquet"}
PARQUET_BUFFER_BYTES = 1 << 20
"""Read buffer of a Parquet column chunk: pages stream through it, so a large row group is never read whole."""
_GLOB_CHARS = set("*?[")


def _parquet_files(source: str) -> list[Path] | None:
    """The Parquet files ``source`` names (a file, a directory or a glob), or None when it names none."""
    p = Path(source)
    if p.is_dir():
        return sorted(q for q in p.rglob("*.parquet") if q.is_file()) or None
    if _GLOB_CHARS & set(source):
        files = sorted(Path(f) for f in glob.glob(source, recursive=True) if f.endswith(".parquet"))
        return files or None
    if p.suffix.lower() == ".parquet":
        return [p]
    return None


def is_local(source: str | os.PathLike) -> bool:
    """Whether ``source`` names local files (a path with a known suffix, an existing path or a glob) rather than
    an HF dataset name."""
    s = str(source)
    return Path(s).suffix.lower() in FILE_SUFFIXES or Path(s).exists() or bool(_GLOB_CHARS & set(s))


def source_name(source: str | os.PathLike, split: str = "train") -> str:
    """How messages name the source: the path, or ``name[split]`` for an HF dataset."""
    return str(source) if is_local(source) else f"{source}[{split}]"


def iter_row_batches(source: str | os.PathLike, batch_size: int = 1000, columns: Sequence[str] | None = None,
                     split: str = "train", hf_config: str | None = None) -> Iterator[list[dict]]:
    """Yield the rows of ``source`` as lists of at most ``batch_size`` dicts, in source order.

    ``columns`` projects Parquet files and HF datasets (a column missing from the source is left out of the rows,
    so that the caller's field check names it); JSON rows keep all their fields.

    Raises DataError (one line: the source and the fix) for a missing file, an unreadable Parquet file, a JSON file
    that is not an array of objects, a malformed JSONL line, or an HF dataset that cannot be loaded.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    from skill_distill.assets import resolve

    s = resolve(str(source))  # a pinned asset (asset:corpus/r1_sample5) -> its verified local copy
    if not is_local(s):
        yield from _hf_batches(s, batch_size, columns, split, hf_config)
        return
    parquet = _parquet_files(s)
    if parquet is not None:
        for f in parquet:
            yield from _parquet_batches(f, batch_size, columns)
        return
    p = Path(s)
    if not p.is_file():
        raise DataError(f"corpus file not found: {p}; check the path (relative paths start at the working directory)")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        yield from _chunks(iter_jsonl(p, "corpus file"), batch_size)
    elif suffix == ".json":
        data = read_json(p, "corpus file")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{p}: a .json corpus must be a JSON array of objects; use .jsonl for one object a line")
        yield from _chunks(iter(data), batch_size)
    else:
        raise DataError(f"{p}: unsupported corpus format {suffix!r}; use .jsonl, .json or .parquet")


def read_rows(source: str | os.PathLike, split: str = "train", columns: Sequence[str] | None = None,
              hf_config: str | None = None) -> tuple[list[dict], str]:
    """Every row of ``source`` in one list, and the source's name for messages (small sources only)."""
    from skill_distill.assets import resolve

    source = resolve(str(source))
    rows = [r for batch in iter_row_batches(source, 10_000, columns, split, hf_config) for r in batch]
    return rows, source_name(source, split)


def _chunks(rows: Iterator[dict], size: int) -> Iterator[list[dict]]:
    while True:  # not itertools.batched (Python 3.12), and the batch is let go before the next one is read
        batch = list(itertools.islice(rows, size))
        if not batch:
            return
        yield batch
        del batch


def _parquet_batches(path: Path, batch_size: int, columns: Sequence[str] | None) -> Iterator[list[dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"corpus file not found: {path}; "
                        "check the path (relative paths start at the working directory)")
    try:
        f = pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e}); re-download or convert it") \
            from None
    present = set(f.schema_arrow.names)
    cols = None if columns is None else [c for c in dict.fromkeys(columns) if c in present]
    first_row = 0
    with f:
        for batch in f.iter_batches(batch_size=batch_size, columns=cols):
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                try:  # Parquet does not enforce UTF-8 in string columns; a full validation finds bad bytes
                    column.validate(full=True)
                except pa.ArrowInvalid as e:
                    raise DataError(f"{path}: column {name!r} holds bytes that are not UTF-8 in rows {first_row}-"
                                    f"{first_row + batch.num_rows - 1} (counting from 0; "
                                    f"{str(e).strip().splitlines()[0]}); re-encode the file as UTF-8") from None
            first_row += batch.num_rows
            yield batch.to_pylist()


def _hf_batches(name: str, batch_size: int, columns: Sequence[str] | None, split: str,
                hf_config: str | None) -> Iterator[list[dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, hf_config, split=split, streaming=True)
        if columns is not None:
            present = set(ds.column_names or [])
            ds = ds.select_columns([c for c in dict.fromkeys(columns) if not present or c in present])
        yield from _chunks(iter(ds), batch_size)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types; the user needs one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"cannot load corpus {name!r} (split {split!r}) as a file or HF dataset: "
                        f"{type(e).__name__}: {first}") from None
