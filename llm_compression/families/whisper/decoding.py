"""Greedy Whisper decoding: special tokens, prompts, logit rules and timestamp segments.

Follows transformers' ``WhisperForConditionalGeneration.generate`` for short-form (<= 30 s) audio:

- multilingual models start from ``<|startoftranscript|> <|lang|> <|task|> <|notimestamps|>``;
  English-only models (vocabulary 51864) from ``<|startoftranscript|> <|notimestamps|>``;
  with timestamps, ``<|notimestamps|>`` is left out;
- with ``language=None`` the language is the argmax over the language tokens of the logits after
  ``<|startoftranscript|>`` alone (transformers' ``detect_language``);
- ``suppress_tokens`` are masked at every step, ``begin_suppress_tokens`` at the first generated one;
- with timestamps, the rules of ``WhisperTimeStampLogitsProcessor`` (openai-whisper's
  ``ApplyTimestampRules``) apply;
- decoding stops at ``<|endoftext|>`` or when the decoder's 448 positions are full.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import FormatError, InputError

SECONDS_PER_TIMESTAMP = 0.02  # one timestamp token = one encoder frame = 320 samples
MAX_INITIAL_TIMESTAMP = 1.0  # the first timestamp may not exceed 1 s (openai-whisper default)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of Whisper's control tokens, looked up in the weight file's tokenizer."""

    sot: int
    eot: int
    no_timestamps: int
    transcribe: int | None
    translate: int | None
    languages: dict[str, int]  # "en" -> id of <|en|>; empty for English-only models

    @property
    def timestamp_begin(self) -> int:  # <|0.00|>
        return self.no_timestamps + 1

    @property
    def no_speech(self) -> int:  # <|nocaptions|> (<|nospeech|> in large-v3), just before
        return self.no_timestamps - 1


def special_tokens(tokenizer, *, multilingual: bool) -> SpecialTokens:
    """Look up the control tokens; languages are the ids between sot and ``<|translate|>``."""

    def need(token: str) -> int:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise FormatError(
                f"the tokenizer stored with this Whisper model has no {token}; "
                "re-convert it with the tokenizer.json of the same checkpoint"
            )
        return token_id

    sot, eot, no_ts = need("<|startoftranscript|>"), need("<|endoftext|>"), need("<|notimestamps|>")
    if not multilingual:
        return SpecialTokens(sot, eot, no_ts, None, None, {})
    translate, transcribe = need("<|translate|>"), need("<|transcribe|>")
    languages = {}
    for token_id in range(sot + 1, translate):
        token = tokenizer.id_to_token(token_id) or ""
        if token.startswith("<|") and token.endswith("|>"):
            languages[token[2:-2]] = token_id
    return SpecialTokens(sot, eot, no_ts, transcribe, translate, languages)


def task_tokens(st: SpecialTokens, task: str, timestamps: bool) -> list[int]:
    """The prompt after ``<|startoftranscript|> [<|lang|>]``."""
    if task not in ("transcribe", "translate"):
        raise InputError(f"task must be 'transcribe' or 'translate', got {task!r}")
    tokens = []
    if st.languages:
        tokens.append(st.transcribe if task == "transcribe" else st.translate)
    elif task == "translate":
        raise InputError(
            "this is an English-only Whisper model: it cannot translate; use task='transcribe'"
        )
    if not timestamps:
        tokens.append(st.no_timestamps)
    return tokens


def language_token(st: SpecialTokens, language: str) -> int:
    code = language.strip().lower().removeprefix("<|").removesuffix("|>")
    if not st.languages:
        if code != "en":
            raise InputError(
                f"this is an English-only Whisper model; language={language!r} is not supported "
                "(use language='en' or None)"
            )
        return -1  # no language token in the prompt
    if code not in st.languages:
        raise InputError(
            f"unknown language {language!r}; expected one of the codes {sorted(st.languages)}"
        )
    return st.languages[code]


def detect_language(logits: torch.Tensor, st: SpecialTokens) -> int:
    """The language token with the highest logit (logits after ``<|startoftranscript|>``)."""
    ids = torch.tensor(sorted(st.languages.values()), device=logits.device)
    return int(ids[logits[ids].argmax()])


def apply_timestamp_rules(
    logits: torch.Tensor, generated: list[int], st: SpecialTokens, *, first_step: bool
) -> None:
    """Mask ``logits`` (vocab,) in place so timestamps come in valid, increasing pairs."""
    ts = st.timestamp_begin
    logits[st.no_timestamps] = -torch.inf
    last_ts = len(generated) >= 1 and generated[-1] >= ts
    penultimate_ts = len(generated) < 2 or generated[-2] >= ts
    if last_ts:
        if penultimate_ts:
            logits[ts:] = -torch.inf  # a pair is complete: text must follow
        else:
            logits[: st.eot] = -torch.inf  # an open pair: a timestamp or eot must follow
    stamps = [t for t in generated if t >= ts]
    if stamps:
        # timestamps never decrease; a single open one may repeat to close the segment
        floor = stamps[-1] if last_ts and not penultimate_ts else stamps[-1] + 1
        logits[ts:floor] = -torch.inf
    if first_step:
        logits[:ts] = -torch.inf
        logits[ts + round(MAX_INITIAL_TIMESTAMP / SECONDS_PER_TIMESTAMP) + 1 :] = -torch.inf
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if logprobs[ts:].logsumexp(dim=-1) > logprobs[:ts].max():
        logits[:ts] = -torch.inf
