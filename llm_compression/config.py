"""Frozen model configs: one ``TransformerConfig`` for the shared core, one config per family.

A config is written as JSON into every weight file (``config_to_dict``) and rebuilt from it
(``config_from_dict``); nothing is ever guessed from a file name. Presets are looked up by exact name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

NormKind = Literal["layernorm", "rmsnorm", "layernorm_nonparam"]
# pre:     x = x + f(norm(x))            (GPT, CLIP, Whisper, Llama, OLMo-1)
# post:    x = norm(x + f(x))            (BERT)
# sandwich_post: x = x + norm(f(x))      (OLMo-2: norm after the sublayer, inside the residual)
NormPlacement = Literal["pre", "post", "sandwich_post"]
Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "swiglu"]
# learned/sinusoidal: an absolute table added by the model's stem (stored as a tensor);
# rotary: applied to q and k inside attention; none: no positions.
Positions = Literal["learned", "sinusoidal", "rotary", "none"]

_NORMS = ("layernorm", "rmsnorm", "layernorm_nonparam")
_PLACEMENTS = ("pre", "post", "sandwich_post")
_ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "swiglu")
_POSITIONS = ("learned", "sinusoidal", "rotary", "none")


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not supported; expected one of {list(allowed)}")


def _positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class TransformerConfig:
    """The shared transformer body. Every model quirk is a value here, never a new class."""

    dim: int
    n_layers: int
    n_heads: int
    mlp_dim: int
    n_kv_heads: int | None = None  # None -> n_heads (grouped-query attention when smaller)
    head_dim: int | None = None  # None -> dim // n_heads
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: NormPlacement = "pre"
    activation: Activation = "gelu"
    causal: bool = False
    positions: Positions = "learned"
    max_positions: int = 0  # length of the absolute table, or the rotary context length
    rope_theta: float = 10000.0
    qkv_bias: bool = True  # bias on q and v (and k unless k_bias is False)
    k_bias: bool = True  # Whisper's k projection has no bias
    out_bias: bool = True  # bias on the attention output projection
    mlp_bias: bool = True
    qk_norm: bool = False  # OLMo-2: a norm over the full q and k projections
    clip_qkv: float | None = None  # OLMo-1 option: clamp q, k, v to [-c, c]
    cross_attention: bool = False  # Whisper decoder
    final_norm: bool = True

    def __post_init__(self) -> None:
        _positive("TransformerConfig", dim=self.dim, n_layers=self.n_layers)
        _positive("TransformerConfig", n_heads=self.n_heads, mlp_dim=self.mlp_dim)
        _choice("norm", self.norm, _NORMS)
        _choice("norm_placement", self.norm_placement, _PLACEMENTS)
        _choice("activation", self.activation, _ACTIVATIONS)
        _choice("positions", self.positions, _POSITIONS)
        if self.head_dim is None and self.dim % self.n_heads:
            raise ConfigError(
                f"dim={self.dim} is not divisible by n_heads={self.n_heads}; "
                "set head_dim explicitly or pick a divisor"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.kv_heads}"
            )
        if self.positions == "rotary" and self.head_size % 2:
            raise ConfigError(f"rotary positions need an even head size, got {self.head_size}")
        if self.positions in ("learned", "sinusoidal") and self.max_positions <= 0:
            raise ConfigError(f"positions={self.positions!r} needs max_positions > 0")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be > 0, got {self.norm_eps}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.dim // self.n_heads


@dataclass(frozen=True)
class CLIPConfig:
    """CLIP: a vision tower (ViT) and a causal text tower, each with a linear projection."""

    vision: TransformerConfig
    text: TransformerConfig
    image_size: int = 224
    patch_size: int = 32
    projection_dim: int = 512
    vocab_size: int = 49408
    eos_token_id: int = 49407  # text pooling takes the hidden state at this token
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    family: str = field(default="clip", init=False)

    def __post_init__(self) -> None:
        _positive("CLIPConfig", image_size=self.image_size, patch_size=self.patch_size)
        _positive("CLIPConfig", projection_dim=self.projection_dim, vocab_size=self.vocab_size)
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        n_pos = (self.image_size // self.patch_size) ** 2 + 1
        if self.vision.max_positions != n_pos:
            raise ConfigError(
                f"vision.max_positions must be (image_size/patch_size)^2 + 1 = {n_pos}, "
                f"got {self.vision.max_positions}"
            )

    @property
    def context_length(self) -> int:
        return self.text.max_positions


@dataclass(frozen=True)
class WhisperConfig:
    """Whisper: conv stem + encoder over log-mel frames, decoder with cross-attention."""

    encoder: TransformerConfig
    decoder: TransformerConfig
    n_mels: int = 80
    vocab_size: int = 51865
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    chunk_seconds: int = 30
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    family: str = field(default="whisper", init=False)

    def __post_init__(self) -> None:
        _positive("WhisperConfig", n_mels=self.n_mels, vocab_size=self.vocab_size)
        if not self.decoder.cross_attention:
            raise ConfigError("WhisperConfig.decoder must have cross_attention=True")
        if self.encoder.max_positions != self.n_frames // 2:
            raise ConfigError(
                f"encoder.max_positions must be n_frames/2 = {self.n_frames // 2} "
                f"(the conv stem halves {self.n_frames} frames), got {self.encoder.max_positions}"
            )

    @property
    def n_samples(self) -> int:  # 480000: samples in one 30 s window
        return self.chunk_seconds * self.sample_rate

    @property
    def n_frames(self) -> int:  # 3000: mel frames in one window (one per hop)
        return self.n_samples // self.hop_length

    @property
    def multilingual(self) -> bool:
        return self.vocab_size >= 51865


@dataclass(frozen=True)
class BertConfig:
    """BERT / MiniLM sentence encoder with the sentence-transformers pooling settings."""

    encoder: TransformerConfig
    vocab_size: int = 30522
    type_vocab_size: int = 2
    pad_token_id: int = 0
    pooling: Literal["mean", "cls", "max"] = "mean"
    normalize: bool = True
    max_seq_length: int = 256  # sentence-transformers truncation length
    family: str = field(default="bert", init=False)

    def __post_init__(self) -> None:
        _choice("pooling", self.pooling, ("mean", "cls", "max"))
        _positive("BertConfig", vocab_size=self.vocab_size, max_seq_length=self.max_seq_length)
        if self.max_seq_length > self.encoder.max_positions:
            raise ConfigError(
                f"max_seq_length={self.max_seq_length} exceeds the position table "
                f"({self.encoder.max_positions}); lower max_seq_length"
            )


@dataclass(frozen=True)
class CausalLMConfig:
    """Decoder-only language models: OLMo-1, OLMo-2 and Llama-family (SmolLM2)."""

    body: TransformerConfig
    vocab_size: int
    tie_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    family: str = "llama"  # "olmo" or "llama": both run on the same core

    def __post_init__(self) -> None:
        _choice("CausalLMConfig.family", self.family, ("olmo", "llama"))
        _positive("CausalLMConfig", vocab_size=self.vocab_size)
        if not self.body.causal:
            raise ConfigError("CausalLMConfig.body must have causal=True")


ModelConfig = CLIPConfig | WhisperConfig | BertConfig | CausalLMConfig
FAMILIES = ("clip", "whisper", "bert", "olmo", "llama")
_FAMILY_CLASSES: dict[str, type] = {
    "clip": CLIPConfig,
    "whisper": WhisperConfig,
    "bert": BertConfig,
    "olmo": CausalLMConfig,
    "llama": CausalLMConfig,
}


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """A JSON-ready dict (nested TransformerConfigs become dicts) including ``family``."""
    return dataclasses.asdict(cfg)


def _build(cls: type, data: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(names) - {"family"})
    if unknown:
        raise ConfigError(
            f"{cls.__name__} got unknown fields {unknown}; expected a subset of {sorted(names)} "
            "(was the file written by a newer llm_compression?)"
        )
    for name, value in data.items():
        if name not in names:
            continue
        if name in ("vision", "text", "encoder", "decoder", "body"):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{cls.__name__}.{name} needs a dict of fields, got {value!r:.40}"
                )
            value = _build(TransformerConfig, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"cannot build {cls.__name__} from {sorted(data)}: {e}") from e


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a family config from ``config_to_dict`` output (as read from a weight file)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a model config is a dict with a 'family', got {type(data).__name__}")
    family = data.get("family")
    if not isinstance(family, str) or family not in _FAMILY_CLASSES:
        raise ConfigError(f"unknown model family {family!r}; supported families: {list(FAMILIES)}")
    if _FAMILY_CLASSES[family] is CausalLMConfig:
        return _build(CausalLMConfig, data)
    return _build(_FAMILY_CLASSES[family], data)


def _clip_vit_b_32() -> CLIPConfig:
    vision = TransformerConfig(
        dim=768, n_layers=12, n_heads=12, mlp_dim=3072, activation="quick_gelu", max_positions=50
    )
    text = TransformerConfig(
        dim=512, n_layers=12, n_heads=8, mlp_dim=2048, activation="quick_gelu",
        causal=True, max_positions=77,
    )  # fmt: skip
    return CLIPConfig(vision=vision, text=text)


def _whisper(dim: int, layers: int, heads: int, vocab: int) -> WhisperConfig:
    common = dict(dim=dim, n_layers=layers, n_heads=heads, mlp_dim=4 * dim, k_bias=False)
    encoder = TransformerConfig(**common, positions="sinusoidal", max_positions=1500)
    decoder = TransformerConfig(
        **common, causal=True, cross_attention=True, positions="learned", max_positions=448
    )
    return WhisperConfig(encoder=encoder, decoder=decoder, vocab_size=vocab)


def _minilm_l6() -> BertConfig:
    encoder = TransformerConfig(
        dim=384, n_layers=6, n_heads=12, mlp_dim=1536, norm_eps=1e-12, norm_placement="post",
        max_positions=512, final_norm=False,  # post-norm: every block already ends in a norm
    )  # fmt: skip
    return BertConfig(encoder=encoder)


def _smollm2_135m() -> CausalLMConfig:
    body = TransformerConfig(
        dim=576, n_layers=30, n_heads=9, n_kv_heads=3, mlp_dim=1536, norm="rmsnorm",
        activation="swiglu", causal=True, positions="rotary", max_positions=8192,
        rope_theta=100000.0, qkv_bias=False, k_bias=False, out_bias=False, mlp_bias=False,
    )  # fmt: skip
    return CausalLMConfig(
        body=body, vocab_size=49152, tie_embeddings=True, bos_token_id=1, eos_token_ids=(2,),
        pad_token_id=2, family="llama",
    )  # fmt: skip


PRESETS: dict[str, ModelConfig] = {
    "clip-vit-b-32": _clip_vit_b_32(),
    "whisper-base": _whisper(512, 6, 8, 51865),
    "whisper-tiny.en": _whisper(384, 4, 6, 51864),
    "all-minilm-l6-v2": _minilm_l6(),
    "smollm2-135m": _smollm2_135m(),
}


def preset(name: str) -> ModelConfig:
    """The config registered under exactly ``name``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"no preset named {name!r}; known presets: {sorted(PRESETS)}") from None
