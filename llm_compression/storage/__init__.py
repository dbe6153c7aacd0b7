"""Embedding tables per modality: durable Arrow/Parquet fragments with exact cosine search.

Uses pyarrow and numpy only (never torch). See docs/storage.md for the layout and guarantees.
"""

from .manifest import FORMAT_VERSION
from .search import SearchResult
from .store import MultimodalStorage
from .table import MODALITIES
from .verify import RepairReport, VerifyReport, repair, verify

__all__ = [
    "FORMAT_VERSION",
    "MODALITIES",
    "MultimodalStorage",
    "RepairReport",
    "SearchResult",
    "VerifyReport",
    "repair",
    "verify",
]
