"""The ONNX Runtime backend: ``load_model(path, backend="onnxruntime")`` (decision 0010).

``session.OrtModel`` runs a weight file's encoders on ONNX Runtime with the weights fed from the
file's rows; ``graphs`` finds the weight-free graphs (bundled in the file, cached, or exported
once by ``export`` from our own modules, which needs torch). Nothing here imports torch at
module level.
"""

from .graphs import EXPORTABLE, GRAPH_VERSION
from .session import DTYPES, OrtModel, parse_ort_dtype

BACKENDS = ("torch", "onnxruntime")

__all__ = ["BACKENDS", "DTYPES", "EXPORTABLE", "GRAPH_VERSION", "OrtModel", "parse_backend",
           "parse_ort_dtype"]  # fmt: skip


def parse_backend(backend: object) -> str:
    """``"torch"`` or ``"onnxruntime"`` (also "ort"), else ConfigError naming both."""
    from ..errors import ConfigError

    name = {"ort": "onnxruntime"}.get(str(backend).lower(), str(backend).lower())
    if not isinstance(backend, str) or name not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not known; choose one of {list(BACKENDS)}")
    return name
