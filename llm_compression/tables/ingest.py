"""Embed on insert: texts and files go through the store's provider, and every file's outcome
(stored, with its size and mtime, or failed, with the reason) goes in the store's ``_files`` table.

A file's modality comes from its first bytes, not its name: image and audio magic numbers, else
UTF-8 text. A ``.jsonl`` file holds one document per line (its ``text`` field), any other text file
is one document. Row ids are the file's absolute path (``path#N`` for line N of a ``.jsonl``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import InvalidEmbeddingError, LLMCompressionError
from . import delta
from .where import is_in, select

FILES_TABLE = "_files"
SNIFF_BYTES = 1 << 16
MAX_TEXT_BYTES = 64 << 20  # a text document larger than this is refused, not read
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
               b"MM\x00*")  # fmt: skip
AUDIO_MAGIC = (b"fLaC", b"OggS", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")
FILES_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime_ns", pa.int64(), nullable=False),
        pa.field("modality", pa.string()),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # "stored" or "failed"
        pa.field("reason", pa.string()),
        pa.field("indexed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclass
class IngestReport:
    """What ``add_files`` did: ``stored`` maps path -> rows written, ``failed`` path -> reason."""

    stored: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    modality: dict[str, str] = field(default_factory=dict)

    def count(self, sources: list[str]) -> None:
        for source in sources:
            self.stored[source] = self.stored.get(source, 0) + 1


def sniff(path: Path) -> str:
    """'image', 'audio', 'video' or 'text' from the file's first bytes; raises on anything else."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    riff = head[8:12] if head.startswith(b"RIFF") else b""
    if head.startswith(IMAGE_MAGIC) or riff == b"WEBP":
        return "image"
    if head.startswith(AUDIO_MAGIC) or riff == b"WAVE" or head[4:11] == b"ftypM4A":
        return "audio"
    if head[4:8] == b"ftyp" or head.startswith(b"\x1aE\xdf\xa3"):
        return "video"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError as e:  # a character cut by the end of the sniff is fine
            if len(head) == SNIFF_BYTES and e.start >= len(head) - 3:
                return "text"
    raise InvalidEmbeddingError(
        "content is not an image (png, jpeg, gif, bmp, tiff, webp), audio (wav, flac, ogg, mp3, "
        "m4a) or UTF-8 text"
    )


def documents(path: Path, text_field: str) -> list[tuple[str, str, dict | None]]:
    """(id, text, metadata) of each document of a text file: the file, or each .jsonl line."""
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise InvalidEmbeddingError(f"text file is larger than {MAX_TEXT_BYTES >> 20} MiB")
    text = path.read_text("utf-8")
    base = str(path)
    if path.suffix.lower() != ".jsonl":
        if not text.strip():
            raise InvalidEmbeddingError("the text file is empty")
        return [(base, text, None)]
    docs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidEmbeddingError(f"line {n} is not JSON ({e.msg})") from None
        value = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise InvalidEmbeddingError(f"line {n} has no non-empty string field {text_field!r}")
        docs.append((f"{base}#{n}", value, {"line": n}))
    if not docs:
        raise InvalidEmbeddingError("the .jsonl file holds no records")
    return docs


@dataclass
class Rows:
    """Embedded rows of one modality, ready for ``add``/``upsert``."""

    ids: list[str]
    vectors: np.ndarray
    sources: list[str]
    metadata: list[dict | None] | None


def group_files(files: list[Path], report: IngestReport, known: dict) -> dict[str, list[Path]]:
    """Files by modality (from their content); unreadable or unknown ones go to ``report``,
    ones ``known`` as stored with the same size and mtime to ``report.skipped``."""
    groups: dict[str, list[Path]] = {"text": [], "image": [], "audio": []}
    for path in files:
        try:
            st = path.stat()
            if known.get(str(path)) == (st.st_size, st.st_mtime_ns, "stored"):
                report.skipped.append(str(path))
                continue
            kind = report.modality[str(path)] = sniff(path)
            if kind not in groups:
                raise InvalidEmbeddingError(
                    f"{kind} files are not indexed (only text, image, audio)"
                )
            groups[kind].append(path)
        except (OSError, LLMCompressionError) as e:
            report.failed[str(path)] = _reason(e)
    return {kind: items for kind, items in groups.items() if items}


def embed_group(provider, kind: str, paths: list[Path], text_field: str, report: IngestReport):
    """``Rows`` of files of one modality, embedded by ``provider``; failures go to ``report``."""
    if kind == "text":
        docs = []
        for path in paths:
            try:
                docs += [(i, t, m, str(path)) for i, t, m in documents(path, text_field)]
            except (OSError, UnicodeDecodeError, LLMCompressionError) as e:
                report.failed[str(path)] = _reason(e)
        if not docs:
            return None
        vectors = provider.encode_batch([d[1] for d in docs])
        return Rows([d[0] for d in docs], np.asarray(vectors, np.float32), [d[3] for d in docs],
                    [d[2] for d in docs])  # fmt: skip
    encode = provider.encode_image if kind == "image" else provider.encode_audio
    result = encode([str(p) for p in paths], on_error="skip")
    for index, reason in result.errors:
        report.failed[str(paths[index])] = reason
    sources = [str(paths[i]) for i in result.indices]
    if not sources:
        return None
    return Rows(sources, np.asarray(result.vectors, np.float32), sources, None)


class IngestMixin:
    """``add_texts`` / ``add_files`` for ``MultimodalStorage`` (which provides ``provider``,
    ``upsert``, ``delete`` and ``path``)."""

    def add_texts(self, texts, *, ids=None, sources=None, metadata=None, upsert: bool = False):
        """Embed texts with the store's text model and add them to the ``text`` table.

        ``ids`` default to a hash of each text (``text:<sha256 prefix>``). Returns the ids.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidEmbeddingError("texts must be a list of str; wrap one text in a list")
        texts = list(texts)
        if ids is None:
            ids = [f"text:{hashlib.sha256(t.encode()).hexdigest()[:24]}" for t in texts]
        vectors = self._require_provider("text").encode_batch(texts)
        write = self.upsert if upsert else self.add
        write(ids, vectors, modality="text", sources=sources, metadata=metadata)
        return list(ids)

    def add_files(self, paths, *, text_field: str = "text", skip_unchanged: bool = False):
        """Embed files (modality from their content) into the image, audio and text tables.

        Each file's rows replace the rows it gave before. A file that cannot be read or embedded
        is recorded with its reason in the store's ``_files`` table; the others still go in.
        ``skip_unchanged``: files stored before with the same size and mtime are skipped.
        """
        report = IngestReport()
        files = [Path(p).resolve() for p in paths]
        groups = group_files(files, report, self.file_log() if skip_unchanged else {})
        for kind, items in groups.items():
            try:
                rows = embed_group(self._require_provider(kind), kind, items, text_field, report)
                if rows is not None:
                    self._replace_rows(kind, rows)
                    report.count(rows.sources)
            except LLMCompressionError as e:  # no model for this modality, a write refused ...
                for path in items:
                    report.failed.setdefault(str(path), _reason(e))
        self.record_files(files, report)
        return report

    def _replace_rows(self, modality: str, rows: Rows) -> None:
        """Upsert the rows, then delete rows the same sources gave before and no longer give."""
        self.upsert(rows.ids, rows.vectors, modality=modality, sources=rows.sources,
                    metadata=rows.metadata)  # fmt: skip
        stale = self._stale_ids(modality, set(rows.sources), set(rows.ids))
        if stale:
            self.delete(stale, modality=modality, missing_ok=True)

    def _stale_ids(self, modality: str, sources: set[str], ids: set[str]) -> list[str]:
        rows = select(self.table(modality), is_in("source", sorted(sources)), "id")
        return [i for i in rows.column("id").to_pylist() if i not in ids]

    def _require_provider(self, modality: str):
        provider = self.provider
        if provider is None:
            raise InvalidEmbeddingError(
                f"embedding {modality} needs a model: open the store with text_model= / "
                "clip_model= / audio_model= (converted weight files)"
            )
        return provider

    # -- the _files table ------------------------------------------------------------------------

    def file_log(self) -> dict[str, tuple[int, int, str]]:
        """path -> (size, mtime_ns, status) of every file ``add_files`` has seen."""
        table = delta.open_table(self.path / FILES_TABLE)
        if table is None:
            return {}
        rows = table.to_pyarrow_table(columns=["path", "size", "mtime_ns", "status"]).to_pylist()
        return {r["path"]: (r["size"], r["mtime_ns"], r["status"]) for r in rows}

    def failures(self) -> dict[str, str]:
        """path -> reason of every file whose last ``add_files`` failed."""
        table = delta.open_table(self.path / FILES_TABLE)
        if table is None:
            return {}
        rows = table.to_pyarrow_table(columns=["path", "status", "reason"]).to_pylist()
        return {r["path"]: r["reason"] for r in rows if r["status"] == "failed"}

    def record_files(self, files: list[Path], report: IngestReport) -> None:
        """Record each file's outcome in the ``_files`` table (merged by path)."""
        now = dt.datetime.now(dt.UTC)
        rows = []
        for path in files:
            key = str(path)
            if key in report.skipped or (key not in report.stored and key not in report.failed):
                continue
            try:
                st = path.stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
            failed = report.failed.get(key)
            rows.append({"path": key, "size": size, "mtime_ns": mtime, "modality": report.modality.get(key),
                         "rows": report.stored.get(key, 0), "status": "failed" if failed else "stored",
                         "reason": failed, "indexed_at": now})  # fmt: skip
        if rows:
            data = pa.Table.from_pylist(rows, schema=FILES_SCHEMA)
            with self._lock.held():
                table = delta.open_table(self.path / FILES_TABLE)
                if table is None:
                    delta.append(self.path / FILES_TABLE, data, {}, operation="log")
                else:
                    delta.merge_by(table, data, "path")


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{type(e).__name__}: {e.strerror}"
    return f"{type(e).__name__}: {e}"
