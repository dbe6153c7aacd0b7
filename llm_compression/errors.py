"""Typed errors. One base class; each subclass also inherits the matching builtin.

Every message says what was wrong, what was expected versus what was found, and how to fix it.
Catch ``LLMCompressionError`` to handle everything this package raises on purpose.
"""

from __future__ import annotations


class LLMCompressionError(Exception):
    """Base class of every error llm_compression raises on purpose."""


class ConfigError(LLMCompressionError, ValueError):
    """A model config is inconsistent or names an unknown preset or option."""


class UnsupportedFamilyError(LLMCompressionError, ValueError):
    """A checkpoint or file is of a model family this package does not run."""


class ModelFileNotFoundError(LLMCompressionError, FileNotFoundError):
    """A weight file, source folder or input file does not exist."""


class FormatError(LLMCompressionError, ValueError):
    """A file is not a llm_compression weight file: not Parquet, wrong schema or unknown version."""


class CorruptFileError(FormatError):
    """A weight file is truncated or its bytes do not match the stored checksums."""


class MissingTensorError(LLMCompressionError, KeyError):
    """A tensor a model needs is absent from a weight file (or an unexpected one is present)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConversionError(LLMCompressionError, ValueError):
    """An upstream checkpoint cannot be converted (no weights, missing tensors, bad shapes)."""


class InputError(LLMCompressionError, ValueError):
    """An input to a model (text, image, audio, video) is empty, malformed or too large."""


class WrongFamilyError(LLMCompressionError, TypeError):
    """A call does not fit the loaded model's family (e.g. transcribe on a MiniLM file)."""


class WrongFamilyMethodError(WrongFamilyError, AttributeError):
    """A method of another model family was called (``load_model(minilm).transcribe(...)``).

    Also an ``AttributeError``, so ``hasattr(model, "transcribe")`` stays False.
    """


class StorageError(LLMCompressionError):
    """Base class of embedding-store errors."""


class StoreNotFoundError(StorageError, FileNotFoundError):
    """A path is not an embedding store."""


class StoreBusyError(StorageError, TimeoutError):
    """Another writer held an embedding store's write lock for longer than the wait allowed."""


class SchemaMismatchError(StorageError, ValueError):
    """Vectors do not fit a table: wrong dimension, dtype, model or modality."""


class StoreCorruptError(StorageError, OSError):
    """A fragment or the manifest of an embedding store is damaged."""


class InvalidEmbeddingError(StorageError, ValueError):
    """Ids or vectors given to an embedding store are invalid (NaN, empty, duplicate or taken ids)."""


class StoreFullError(StorageError, OSError):
    """The disk under an embedding store is full; nothing of the failed write was committed."""


class InvalidFilterError(StorageError, ValueError):
    """A ``where`` filter of an embedding-store search is not a valid predicate over its columns."""


class IdNotFoundError(StorageError, KeyError):
    """Ids asked of an embedding store are not in it."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ValidationFailedError(LLMCompressionError, AssertionError):
    """Outputs of a converted model differ from the reference beyond the threshold."""
