"""The aligned multimodal space (phase 1) and the pet-behaviour report (phase 2).

Frozen encoders (through the provider) -> cached features -> projection heads -> one 512-d unit
sphere, trained with ``info_nce`` (or ``vicreg`` / ``barlow_twins``); a projector turns aligned
vectors into soft prompts for a frozen causal LM, which writes a JSON report by constrained
decoding. See docs/alignment.md.
"""

from .config import AlignConfig, LossConfig, Stage, load_config, parse_config
from .dataset import Record, read_records
from .features import Features, build_features
from .heads import AlignModel, AlignModelConfig, load_checkpoint, save_checkpoint
from .losses import MemoryQueue, barlow_twins, info_nce, vicreg
from .report import report_schema, validate_report, write_report
from .trainer import Callback, Checkpoint, EarlyStopping, MetricsLog, Progress, Trainer

__all__ = [
    "AlignConfig", "AlignModel", "AlignModelConfig", "Callback", "Checkpoint", "EarlyStopping",
    "Features", "LossConfig", "MemoryQueue", "MetricsLog", "Progress", "Record", "Stage",
    "Trainer", "barlow_twins", "build_features", "info_nce", "load_checkpoint", "load_config",
    "parse_config", "read_records", "report_schema", "save_checkpoint", "validate_report",
    "vicreg", "write_report",
]  # fmt: skip
