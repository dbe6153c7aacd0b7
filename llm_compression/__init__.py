"""llm_compression: a compressed Parquet model weight store and CPU inference engine."""

from .errors import LLMCompressionError

__version__ = "0.1.0"

__all__ = ["LLMCompressionError", "__version__"]
