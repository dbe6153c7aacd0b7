"""Tokenizers from the files stored in a weight file, without transformers.

`Tokenizer.from_files` builds a `tokenizers.Tokenizer` from ``tokenizer.json`` and reads
``tokenizer_config.json`` (special tokens, ``add_bos_token`` / ``add_eos_token``,
``model_max_length``, ``clean_up_tokenization_spaces``, ``chat_template``; a ``chat_template.jinja``
file wins over the config's template). It behaves like transformers' tokenizers backend on the same
files: truncation and padding saved inside ``tokenizer.json`` are switched off (callers choose per
call), an explicit ``add_bos_token`` / ``add_eos_token`` rebuilds the post-processor as
``[bos] $A [eos]``, named special tokens missing from the vocabulary are added, and chat templates
render in a sandboxed jinja2 environment with the same options and globals.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from ..errors import FormatError, InputError

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")  # fmt: skip


def _token_str(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise FormatError(f"tokenizer_config.json has a special token of unexpected form {value!r}")


def _json(files: Mapping[str, bytes], name: str) -> dict[str, Any] | None:
    if name not in files:
        return None
    try:
        data = json.loads(files[name])
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{name} in the weight file is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise FormatError(f"{name} must hold a JSON object, got {type(data).__name__}")
    return data


def _chat_template(files: Mapping[str, bytes], config: Mapping[str, Any]) -> str | None:
    if "chat_template.jinja" in files:
        return files["chat_template.jinja"].decode("utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


@functools.lru_cache(maxsize=32)
def _compile_template(template: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)  # fmt: skip

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


class Tokenizer:
    """Text <-> token ids with the `tokenizers` library; ids identical to transformers'.

    Build it with `Tokenizer.from_files` (the ``files`` dict of a weight file).

    Examples
    --------
    >>> tok = Tokenizer.from_files({"tokenizer.json": data})  # doctest: +SKIP
    >>> tok.decode(tok.encode("hello world"))  # doctest: +SKIP
    'hello world'
    """

    def __init__(self, backend: Any, config: Mapping[str, Any] | None = None,
                 chat_template: str | None = None) -> None:  # fmt: skip
        self._tok = backend
        self._tok.no_truncation()
        self._tok.no_padding()
        self.config: dict[str, Any] = dict(config or {})
        self.special_tokens: dict[str, str] = {}
        for name in _SPECIAL_NAMES:
            token = _token_str(self.config.get(name))
            if token is not None:
                self.special_tokens[name] = token
        self._add_missing_special_tokens()
        if "add_bos_token" in self.config or "add_eos_token" in self.config:
            self._template_post_processor()
        self.chat_template = chat_template
        self.model_max_length: int | None = self.config.get("model_max_length")
        self.clean_up_tokenization_spaces = bool(self.config.get("clean_up_tokenization_spaces"))
        # by max_length (None: no truncation); others parsed from ``_tok`` on first need
        self._backends: dict[int | None, Any] = {None: backend}
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> Tokenizer:
        """Build from ``tokenizer.json`` (+ ``tokenizer_config.json``, ``chat_template.jinja``)."""
        from tokenizers import Tokenizer as Backend

        if "tokenizer.json" not in files:
            raise FormatError(
                f"no tokenizer.json among the stored files {sorted(files)}; re-convert the model "
                "with its tokenizer folder so the weight file carries tokenizer.json"
            )
        try:
            backend = Backend.from_str(files["tokenizer.json"].decode("utf-8"))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise FormatError(f"tokenizer.json cannot be loaded by `tokenizers`: {e}") from e
        config = _json(files, "tokenizer_config.json") or {}
        return cls(backend, config, _chat_template(files, config))

    def _add_missing_special_tokens(self) -> None:
        from tokenizers import AddedToken

        missing = [t for t in self.special_tokens.values() if self._tok.token_to_id(t) is None]
        if missing:
            self._tok.add_special_tokens(
                [AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(missing)]
            )

    def _template_post_processor(self) -> None:
        from tokenizers import processors

        bos, eos = self.special_tokens.get("bos_token"), self.special_tokens.get("eos_token")
        add_bos = bool(self.config.get("add_bos_token")) and bos is not None
        add_eos = bool(self.config.get("add_eos_token")) and eos is not None
        single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
        pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
        special = [
            (t, self._tok.token_to_id(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on
        ]
        self._tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=special
        )

    # --- ids -----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (transformers' ``len(tokenizer)``)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token`` (a special token such as ``<|en|>`` or a vocabulary entry), else None."""
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self._tok.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @staticmethod
    def _check_text(text: Any) -> str:
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate such as "\ud800"
            raise InputError(
                f"text has {text[e.start : e.end]!r} at character {e.start}, which is not valid "
                "Unicode (a lone surrogate); clean it, e.g. "
                "text.encode('utf-8', 'replace').decode('utf-8')"
            ) from e
        return text

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (with the tokenizer's special tokens unless told otherwise)."""
        backend = self._backend(None)
        return backend.encode(self._check_text(text), add_special_tokens=add_special_tokens).ids

    def truncate_by_default(self, max_length: int) -> None:
        """Truncate at ``max_length`` with the backend already parsed, the length every call of
        an encoder asks for (its text context): an untruncated copy is parsed only if a call
        without ``max_length`` comes. One parse of tokenizer.json at load instead of two (~20-30
        ms of a fresh process's first embedding). Call it before threads share the tokenizer."""
        with self._lock:
            if self._backends.get(None) is self._tok and max_length not in self._backends:
                self._tok.enable_truncation(max_length)
                del self._backends[None]
                self._backends[max_length] = self._tok

    def _backend(self, max_length: int | None) -> Any:
        """The backend truncating at ``max_length`` (None: not truncating), a private copy so
        concurrent calls never share the setting: parsed from ``_tok`` on first need."""
        from tokenizers import Tokenizer as Backend

        with self._lock:
            backend = self._backends.get(max_length)
            if backend is None:
                backend = Backend.from_str(self._tok.to_str())
                if max_length is None:
                    backend.no_truncation()
                else:
                    backend.enable_truncation(max_length)
                self._backends[max_length] = backend
            return backend

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        pad_id: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode several texts, right-padded to the longest.

        Parameters
        ----------
        texts : sequence of str
        max_length : int, optional
            Truncate each sequence to at most this many tokens, special tokens included (the
            `tokenizers` truncation, so ``[SEP]`` / eos stay at the end as in transformers).
            None: no truncation.
        add_special_tokens : bool
        pad_id : int, optional
            Padding id; default the pad token's id, else the eos token's, else 0. The attention
            mask marks real tokens either way.

        Returns
        -------
        (ids, attention_mask) : two numpy.int64 arrays of shape ``(N, T)``.
        """
        if isinstance(texts, str):
            raise InputError("encode_batch takes a list of texts; use encode() for one string")
        texts = [self._check_text(t) for t in texts]
        if not texts:
            raise InputError("no texts given; pass at least one string")
        if max_length is not None and (not isinstance(max_length, int) or max_length <= 0):
            raise InputError(f"max_length must be a positive integer, got {max_length!r}")
        backend = self._backend(max_length)
        encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        if pad_id is None:
            pad_id = next((i for i in (self.pad_token_id, self.eos_token_id) if i is not None), 0)
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return ids, mask

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``.

        ``clean_up_tokenization_spaces`` from the config applies to non-BPE models only (as in
        transformers 5); a BPE end-of-word suffix (CLIP's ``</w>``) becomes a space, then the text
        is stripped.
        """
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        text = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        suffix = getattr(self._tok.model, "end_of_word_suffix", None)
        if suffix:  # CLIP's BPE marks word ends with "</w>"; transformers turns them into spaces
            text = text.replace(suffix, " ").strip()
        if self.clean_up_tokenization_spaces and type(self._tok.model).__name__ != "BPE":
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                                  (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                                  (" 're", "'re")):  # fmt: skip
                text = text.replace(before, after)
        return text

    # --- chat ----------------------------------------------------------------------------------

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> str:
        """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) with the chat template.

        Rendered like transformers: sandboxed jinja2 with ``trim_blocks`` and ``lstrip_blocks``,
        the ``raise_exception``, ``strftime_now`` and ``tojson`` helpers, the special tokens
        (``bos_token``, ``eos_token`` ...) as variables, and ``None`` values dropped from messages.
        """
        if self.chat_template is None:
            raise InputError(
                "this tokenizer has no chat template; pass a plain prompt instead of messages"
            )
        if isinstance(messages, (str, bytes)) or not all(isinstance(m, Mapping) for m in messages):
            raise InputError(
                "messages must be a list of dicts like {'role': 'user', 'content': 'Hi'}"
            )
        import jinja2

        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return _compile_template(self.chat_template).render(
                messages=chat, tools=None, documents=None,
                add_generation_prompt=add_generation_prompt, **self.special_tokens,
            )  # fmt: skip
        except jinja2.exceptions.TemplateError as e:
            raise InputError(f"the chat template rejected the messages: {e}") from e
