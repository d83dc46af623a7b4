"""Reading and writing tables (CSV, Parquet) by file extension.

Reading sniffs a CSV's delimiter (``,`` ``;`` or tab) and turns every failure into a
:class:`TableError` that names the file and says what to do. Writing is atomic: the table goes
to a temporary file in the target directory, which is then renamed over the target, so a
failure never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pandas as pd

from edge_runtime.errors import InputError

CSV_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")
DELIMITERS: tuple[str, ...] = (",", ";", "\t")
_SNIFF_LINES = 50


class TableError(InputError):
    """A table file is missing, empty, malformed or has an unsupported extension."""


def table_format(path: str | Path) -> str:
    """``"csv"`` or ``"parquet"`` from the file extension; :class:`TableError` otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    supported = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
    raise TableError(f"{path}: unknown file extension {suffix or '(none)'!r}; use one of {supported}.")


def sniff_delimiter(lines: list[str]) -> str:
    """The delimiter among ``,`` ``;`` tab that splits the header and the data lines alike.

    The header decides ties, so ``datetime;a;b`` with decimal commas in the data is still read as ``;``.
    """
    lines = [line for line in lines if line.strip()]
    if not lines:
        return ","
    header, data = lines[0], lines[1:]
    best, best_count = ",", 0
    for delimiter in DELIMITERS:
        count = header.count(delimiter)
        if count == 0:
            continue
        consistent = all(line.count(delimiter) == count for line in data)
        # A delimiter that splits every line the same way beats one that only splits the header.
        score = count + (1_000_000 if consistent else 0)
        if score > best_count:
            best, best_count = delimiter, score
    return best


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (delimiter sniffed) or Parquet file as it is: no parsing of dates or labels."""
    path = Path(path)
    fmt = table_format(path)
    if not path.exists():
        raise TableError(f"{path}: file not found; check the path (relative to {Path.cwd()}).")
    if path.is_dir():
        raise TableError(f"{path}: is a directory; pass a .csv or .parquet file.")
    if path.stat().st_size == 0:
        raise TableError(f"{path}: the file is empty; it needs a header row and data rows.")
    frame = _read_csv(path) if fmt == "csv" else _read_parquet(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _read_csv(path: Path) -> pd.DataFrame:
    with path.open("r", encoding="utf-8-sig", errors="replace") as fh:
        head = [line for _, line in zip(range(_SNIFF_LINES), fh, strict=False)]
    delimiter = sniff_delimiter(head)
    try:
        # low_memory=False: a mixed-type column must not emit DtypeWarning (warnings are errors in tests).
        return pd.read_csv(path, sep=delimiter, encoding="utf-8-sig", skipinitialspace=True, low_memory=False)
    except pd.errors.EmptyDataError as exc:
        raise TableError(f"{path}: the file has no columns; it needs a header row and data rows.") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise TableError(
            f"{path}: cannot parse as CSV with delimiter {delimiter!r}: {exc}. "
            "Check that every row has as many fields as the header."
        ) from exc


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise TableError(f"{path}: cannot read as Parquet: {exc}. Is it really a Parquet file?") from exc


def _csv_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Timezone-aware timestamp columns rendered as ISO 8601 with a ``Z`` (``2026-01-05T00:00:00Z``)."""
    out = frame.copy()
    for column in out.columns:
        series = out[column]
        if isinstance(series.dtype, pd.DatetimeTZDtype):
            utc = series.dt.tz_convert("UTC")
            whole_seconds = bool((utc.dt.microsecond == 0).all() and (utc.dt.nanosecond == 0).all())
            fmt = "%Y-%m-%dT%H:%M:%SZ" if whole_seconds else "%Y-%m-%dT%H:%M:%S.%fZ"
            out[column] = utc.dt.strftime(fmt)
    return out


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is racy across threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as CSV or Parquet (by extension), atomically; returns the path written."""
    path = Path(path)
    fmt = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if fmt == "csv":
                _csv_ready(frame).to_csv(fh, index=False, lineterminator="\n")
            else:
                frame.to_parquet(fh, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
