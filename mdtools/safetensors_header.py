"""Reading a safetensors file's JSON header (names, dtypes, shapes, offsets) without reading its weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

#: a header longer than this is taken as a sign of a file that is not safetensors
MAX_HEADER_BYTES = 100_000_000


def read_header(path: str | Path) -> tuple[int, dict[str, Any]]:
    """(header length n, header) of a safetensors file: 8 bytes little-endian n, then n bytes of JSON.

    Raises ValueError naming what is wrong (too short, a length that does not fit the file, not a
    JSON object); OSError when the file cannot be read."""
    p = Path(path)
    with p.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if not 2 <= n <= min(MAX_HEADER_BYTES, p.stat().st_size - 8):
            raise ValueError(f"header length {n} does not fit the file")
        meta = json.loads(f.read(n))
    if not isinstance(meta, dict):
        raise ValueError("header is not a JSON object")
    return n, meta


def tensor_entries(meta: dict[str, Any]) -> dict[str, Any]:
    """The header's tensor entries (without `__metadata__`)."""
    return {k: v for k, v in meta.items() if k != "__metadata__"}


__all__ = ["MAX_HEADER_BYTES", "read_header", "tensor_entries"]
