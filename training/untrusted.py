"""The files an import is given, read as untrusted input: every file and archive member has a size limit, checked
before it is read (an archive's member sizes from its directory) and enforced while it is read (a stream cut at
the limit), so a small file that decompresses to gigabytes is refused, with the limit named, having allocated
no more than the limit. Nothing here runs what it reads; training/keras_config.py reads Keras configurations
through it.

The limits are far above what a recurrent text classifier needs (a tutorial's config.json is 5-20 KB, its
weights 1-50 MB) and far below what would exhaust a 24 GB machine.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from rnnserve.training.export import ExportError

MiB = 1 << 20
MAX_CONFIG_BYTES = 32 * MiB  # a model's configuration or metadata (config.json, model_config, keras_metadata.pb)
MAX_TEXT_BYTES = 512 * MiB  # vocabularies, tokenizer files, parity texts, references
MAX_MODEL_BYTES = 4096 * MiB  # a model file, a SavedModel directory, an archive's members together


class ImportRefused(ExportError):
    """The model or its preprocessing cannot be served exactly, or cannot be read safely; the message names what
    and what is supported."""


def size_text(n: int) -> str:
    return f"{n / MiB:,.0f} MiB" if n >= MiB else f"{n:,} bytes"


def check_size(path: Path, limit: int, what: str) -> int:
    """The size of a file, or of a directory's files together, refused past `limit` bytes."""
    path = Path(path)
    try:
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    except OSError as exc:
        raise ImportRefused(f"cannot read {what} {path}: {exc}") from exc
    if size > limit:
        raise ImportRefused(f"{what} {path.name} is {size_text(size)}; the import reads at most {size_text(limit)}")
    return size


def read_bytes(path: Path, limit: int, what: str) -> bytes:
    """A file's bytes, at most `limit` of them (checked before, and cut while reading: a file may grow)."""
    check_size(path, limit, what)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ImportRefused(f"cannot read {what} {path}: {exc}") from exc
    if len(data) > limit:
        raise ImportRefused(f"{what} {Path(path).name} is over the {size_text(limit)} the import reads")
    return data


def read_text(path: Path, limit: int, what: str) -> str:
    """A UTF-8 file's text (a BOM dropped), at most `limit` bytes of it."""
    try:
        return read_bytes(path, limit, what).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportRefused(f"{what} {Path(path).name} is not UTF-8 text: {exc}") from None


def open_zip(path: Path, limits: dict[str, int], default: int, what: str) -> zipfile.ZipFile:
    """A zip archive whose members' sizes, as its directory states them, are within `limits` (member name ->
    bytes; others `default`) and together within MAX_MODEL_BYTES. Python's zipfile never yields more than a
    member's stated size (and checks its CRC), so the directory's sizes bound what reading decompresses."""
    check_size(path, MAX_MODEL_BYTES, what)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ImportRefused(f"{what} {Path(path).name} is not a readable zip archive: {exc}") from exc
    total = 0
    for info in archive.infolist():
        limit = limits.get(info.filename, default)
        total += info.file_size
        if info.file_size > limit or total > MAX_MODEL_BYTES:
            archive.close()
            member = f"member {info.filename!r}" if info.file_size > limit else "members together"
            raise ImportRefused(f"{what} {Path(path).name}: {member} would decompress to "
                                f"{size_text(max(info.file_size, total))}; the import reads at most "
                                f"{size_text(limit if info.file_size > limit else MAX_MODEL_BYTES)}")
    return archive


def read_member(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """One member's bytes, streamed and cut at `limit` (its stated size was checked by open_zip)."""
    try:
        with archive.open(name) as fh:
            data = fh.read(limit + 1)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ImportRefused(f"cannot read {name!r} from {Path(str(archive.filename)).name}: {exc}") from exc
    if len(data) > limit:
        raise ImportRefused(f"{name!r} in {Path(str(archive.filename)).name} is over the {size_text(limit)} the "
                            "import reads")
    return data
