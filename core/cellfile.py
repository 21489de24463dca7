"""A parquet file that vouches for itself: written atomically with a sha256 of its rows
in its metadata, and trusted on read only if its rows still match (a truncated, empty,
altered or foreign file is :class:`CorruptFile`, never data)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: the metadata key of a file's row checksum
CHECKSUM = b"l2obench.sha256"


def _rows_digest(table) -> str:
    """A sha256 of a table's rows: every column's name, type, nulls and values (its
    metadata left out)."""
    import numpy as np
    import pyarrow as pa

    digest = hashlib.sha256()
    for name, column in zip(table.column_names, table.columns):
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        digest.update(f"{name}\0{array.type}\0{len(array)}\0".encode())
        if array.null_count:
            digest.update(np.packbits(array.is_null().to_numpy(zero_copy_only=False)).tobytes())
        kind = array.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
                or pa.types.is_large_binary(kind):
            array = array.fill_null("" if not pa.types.is_binary(kind) else b"").cast(pa.large_binary())
            offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset: array.offset + len(array) + 1]
            data = array.buffers()[2]
            digest.update((offsets - offsets[0]).tobytes())
            if data is not None:
                digest.update(memoryview(data)[offsets[0]: offsets[-1]])
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            digest.update(array.fill_null(False if pa.types.is_boolean(kind) else 0)
                          .to_numpy(zero_copy_only=False).tobytes())
        else:
            digest.update(repr(array.to_pylist()).encode())
    return digest.hexdigest()


def write_table(path: Path, table) -> None:
    """Write ``table`` to ``path`` atomically (tmp file, fsync, ``os.replace``), with the
    sha256 of its rows as read back in its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    digest = _rows_digest(pq.read_table(pa.BufferReader(buffer.getvalue())))
    table = table.replace_schema_metadata({**(_without_checksum(table).schema.metadata or {}),
                                           CHECKSUM: digest.encode()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class CorruptFile(Exception):
    """A parquet file of a run directory that is unreadable or fails its checksum."""


def read_verified(path: str | os.PathLike, columns: list[str] | None = None, *, unchecked_ok: bool = False):
    """The pyarrow Table in ``path`` once its rows match the checksum in its metadata (then
    only ``columns``, if given); raises :class:`CorruptFile` saying what is wrong.
    ``unchecked_ok`` accepts a readable file written before files had checksums (for
    reading old results; the runner recomputes such a cell)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CorruptFile("the file is empty")
        table = pq.read_table(path)
    except CorruptFile:
        raise
    except (OSError, pa.ArrowException, ValueError) as exc:
        text = str(exc).strip().splitlines()
        raise CorruptFile(f"not a readable parquet file ({text[0] if text else type(exc).__name__})") from None
    expected = (table.schema.metadata or {}).get(CHECKSUM)
    if expected is None:
        if unchecked_ok:
            return table.select(columns) if columns is not None else table
        raise CorruptFile("it has no checksum (written by an older l2obench, or not by l2obench)")
    table = _without_checksum(table)
    if _rows_digest(table) != expected.decode():
        raise CorruptFile("its rows do not match their checksum")
    return table.select(columns) if columns is not None else table


def _without_checksum(table):
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != CHECKSUM}
    return table.replace_schema_metadata(metadata or None)
