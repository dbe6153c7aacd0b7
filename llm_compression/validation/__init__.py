"""Precision validation: a converted weight file against Hugging Face transformers on real inputs.

Validation may import transformers (the runtime path never does). ``validate`` builds the HF
reference from the same upstream source the file was converted from, runs both on fixed real
inputs (photos, speech, sentences, prompts) and compares every output against thresholds that
depend on the file's storage dtype (see :mod:`.compare`).

Example
-------
>>> from llm_compression.validation import validate
>>> report = validate("minilm.parquet", "all-MiniLM-L6-v2/")  # doctest: +SKIP
>>> print(report.table())                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..errors import InputError, ValidationFailedError
from .compare import MIN_COSINE, OutputResult, Thresholds, ValidationReport
from .inputs import ValidationInputs, default_inputs
from .reference import Reference, build_reference

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_COSINE",
    "OutputResult",
    "Thresholds",
    "ValidationInputs",
    "ValidationReport",
    "build_reference",
    "compare_models",
    "validate",
]


def compare_models(
    ours, reference: Reference, *, dtype: str, inputs: ValidationInputs | None = None
) -> list[OutputResult]:
    """Compare an already loaded model of ours with an already built reference."""
    from .runners import RUNNERS

    family = reference.family
    inputs = inputs or default_inputs(family)
    outputs = RUNNERS[family](ours, reference, inputs, Thresholds.for_dtype(dtype))
    if not outputs:
        raise InputError(
            f"the inputs hold nothing a {family} model takes (images, speech, sentences or "
            "prompts are empty); pass inputs=None for the fixed inputs of the family"
        )
    return outputs


def validate(
    parquet: str | os.PathLike,
    reference_src: str | os.PathLike,
    *,
    inputs: ValidationInputs | None = None,
    raise_on_failure: bool = True,
    reference: Reference | None = None,
) -> ValidationReport:
    """Run the weight file and its HF reference on the same inputs and compare the outputs.

    Parameters
    ----------
    parquet : a weight file written by ``llm_compression.convert``.
    reference_src : the upstream source it was converted from: a Hugging Face folder, a GGUF
        file (or a folder holding one) or a CTranslate2 Whisper folder.
    inputs : override the fixed inputs (:func:`.inputs.default_inputs` of the family).
    raise_on_failure : raise ValidationFailedError (carrying ``.report``) below threshold.
    reference : a reference already built by :func:`build_reference` (reused across files).

    Returns
    -------
    ValidationReport : per output min cosine, max abs diff, top-1 agreement, exact matches.
    """
    from ..loader import load_model
    from ..weightfile import read_metadata

    times: dict[str, float] = {}
    start = time.perf_counter()
    meta = read_metadata(parquet)
    ours = load_model(parquet)
    times["load_ours"] = time.perf_counter() - start
    family = ours.config.family
    if reference is None:
        start = time.perf_counter()
        reference = build_reference(Path(reference_src), family, meta.files)
        times["load_reference"] = time.perf_counter() - start
    th = Thresholds.for_dtype(meta.storage_dtype)
    start = time.perf_counter()
    outputs = compare_models(ours, reference, dtype=meta.storage_dtype, inputs=inputs)
    times["compare"] = time.perf_counter() - start
    report = ValidationReport(
        str(parquet), str(reference_src), family, meta.storage_dtype, th, outputs, times
    )
    logger.info("validation of %s:\n%s", parquet, report.table())
    if raise_on_failure and not report.passed:
        try:
            report.check()
        except ValidationFailedError as e:
            e.report = report
            raise
    return report
