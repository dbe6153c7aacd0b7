"""Datasets: JSONL, one record per line.

```json
{"id": "cat-03", "image": "img/cat-03.png", "audio": "wav/cat-03.wav", "text": "a cat on a rug",
 "label": "cat", "emotion": "calm", "behaviours": ["resting"]}
```
``image``, ``audio`` and ``video`` are file paths (relative to the JSONL file); ``text`` is the text
itself. Any of them may be absent (or null): that modality is missing for the record. ``label``
names the subject (used for supervised positives, prototypes and retrieval); ``emotion`` and
``behaviours`` are the report's targets.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, ModelFileNotFoundError

FILE_MODALITIES = ("image", "audio", "video")


@dataclass(frozen=True)
class Record:
    id: str
    inputs: dict[str, str]  # modality -> path (image, audio, video) or the text itself
    label: str | None = None
    emotion: str | None = None
    behaviours: tuple[str, ...] = ()

    def has(self, modality: str) -> bool:
        return modality in self.inputs


def _record(raw: dict, root: Path, where: str) -> Record:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
        raise InputError(f"{where}: a record must be a JSON object with a non-empty string `id`")
    inputs: dict[str, str] = {}
    for m in FILE_MODALITIES:
        if raw.get(m) is not None:
            inputs[m] = str(root / raw[m])
    if raw.get("text") is not None:
        if not isinstance(raw["text"], str) or not raw["text"].strip():
            raise InputError(f"{where}: `text` must be a non-empty string or null")
        inputs["text"] = raw["text"]
    behaviours = raw.get("behaviours") or ()
    if not isinstance(behaviours, list | tuple) or not all(isinstance(b, str) for b in behaviours):
        raise InputError(f"{where}: `behaviours` must be a list of strings, got {behaviours!r}")
    return Record(raw["id"], inputs, raw.get("label"), raw.get("emotion"), tuple(behaviours))


def read_records(path: str | os.PathLike) -> list[Record]:
    """Records of a JSONL file; paths are resolved against its folder. Ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFoundError(
            f"no dataset at {path}; build one with scripts/build_align_dataset.py"
        )
    records, seen = [], set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n} is not JSON ({e}); one JSON object per line") from e
        record = _record(raw, path.parent, f"{path}:{n}")
        if record.id in seen:
            raise InputError(f"{path}:{n}: id {record.id!r} repeats; ids must be unique")
        seen.add(record.id)
        records.append(record)
    if not records:
        raise InputError(f"{path} holds no records; write one JSON object per line")
    return records


def split(records: list[Record], holdout: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, held out): a seeded shuffle within each label, ``holdout`` of each label held out."""
    import random

    by_label: dict[str | None, list[Record]] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r)
    train, held = [], []
    rng = random.Random(seed)
    for label in sorted(by_label, key=str):
        group = sorted(by_label[label], key=lambda r: r.id)
        rng.shuffle(group)
        k = round(len(group) * holdout)
        held += group[:k]
        train += group[k:]
    return train, held
