"""Embedding tables: one Delta Lake table per modality, exact cosine search, embed on insert.

Uses deltalake, pyarrow and numpy (never torch). See docs/storage.md for columns and guarantees.
"""

from .ingest import IngestReport, sniff
from .schema import MODALITIES, VECTOR_TYPE
from .search import Hit, SearchResult
from .store import MultimodalStorage
from .verify import RepairReport, VerifyReport, repair, verify

__all__ = [
    "MODALITIES",
    "VECTOR_TYPE",
    "Hit",
    "IngestReport",
    "MultimodalStorage",
    "RepairReport",
    "SearchResult",
    "VerifyReport",
    "repair",
    "sniff",
    "verify",
]
