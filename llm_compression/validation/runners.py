"""Per-family comparisons: run ours and the HF reference on the same inputs, compare outputs."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..preprocess.image import DEFAULT_MAX_PIXELS
from ..provider.modalities import embed_audio, embed_images, embed_texts, text_ids
from .compare import (
    OutputResult,
    Thresholds,
    compare_sequences,
    compare_texts,
    compare_vectors,
    nearest_agreement,
)
from .inputs import ValidationInputs
from .reference import Reference


def _ids_output(name: str, ours: list[list[int]], ref: list[list[int]]) -> OutputResult:
    same = ours == ref
    bad = [i for i, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b]
    return OutputResult(
        name, "tokens", len(ours), identical=same, passed=same,
        detail="" if same else f"inputs {bad} tokenize differently: ours {ours[bad[0]][:12]}, "
        f"reference {ref[bad[0]][:12]}",
    )  # fmt: skip


def run_clip(ours, ref: Reference, inputs: ValidationInputs, th: Thresholds) -> list[OutputResult]:
    """Image embeddings (each side's own preprocessing), text embeddings and their top-1 match."""
    hf = ref.model
    out = []
    img = txt = ref_img = ref_txt = None
    with torch.inference_mode():
        if inputs.images:
            from PIL import Image

            img = embed_images(ours, list(inputs.images), max_pixels=DEFAULT_MAX_PIXELS).vectors
            pixels = ref.settings["image_processor"](
                images=[Image.open(p).convert("RGB") for p in inputs.images], return_tensors="pt"
            ).pixel_values
            ref_img = torch.nn.functional.normalize(
                hf.get_image_features(pixel_values=pixels).pooler_output, dim=-1
            )
            out.append(
                compare_vectors(
                    "image_embedding", img, ref_img, th, top1=nearest_agreement(img, ref_img)
                )
            )
        if inputs.sentences:
            context = ours.config.context_length
            ref_ids = [
                ref.tokenizer(s, truncation=True, max_length=context).input_ids
                for s in inputs.sentences
            ]
            ids, mask = text_ids(ours, list(inputs.sentences))
            our_ids = [row[m.astype(bool)].tolist() for row, m in zip(ids, mask, strict=True)]
            out.append(_ids_output("text_token_ids", our_ids, ref_ids))
            txt = embed_texts(ours, list(inputs.sentences))
            feats = [
                hf.get_text_features(input_ids=torch.tensor([i])).pooler_output for i in ref_ids
            ]
            ref_txt = torch.nn.functional.normalize(torch.cat(feats), dim=-1)
            out.append(
                compare_vectors(
                    "text_embedding", txt, ref_txt, th, top1=nearest_agreement(txt, ref_txt)
                )
            )
    if img is not None and txt is not None:
        agree = np.mean((img @ txt.T).argmax(1) == (ref_img.numpy() @ ref_txt.numpy().T).argmax(1))
        out.append(OutputResult("image_to_text_top1", "top1", len(img), top1_agreement=float(agree),
                                required=False, passed=bool(agree == 1.0)))  # fmt: skip
    return out


def run_bert(ours, ref: Reference, inputs: ValidationInputs, th: Thresholds) -> list[OutputResult]:
    """Sentence embeddings with the reference pooling, and token ids."""
    if not inputs.sentences:
        return []
    s = ref.settings
    max_len = s.get("max_seq_length") or ours.config.max_seq_length
    enc = [ref.tokenizer(t, truncation=True, max_length=max_len) for t in inputs.sentences]
    our_ids, our_masks = text_ids(ours, list(inputs.sentences))
    our_rows = [
        [int(i) for i, m in zip(row, mask, strict=True) if m]
        for row, mask in zip(our_ids, our_masks, strict=True)
    ]
    out = [_ids_output("token_ids", our_rows, [e.input_ids for e in enc])]
    vectors = []
    with torch.inference_mode():
        for e in enc:
            ids = torch.tensor([e.input_ids])
            h = ref.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                          token_type_ids=torch.zeros_like(ids)).last_hidden_state[0]  # fmt: skip
            v = {"cls": h[0], "max": h.max(0).values}.get(s.get("pooling"), h.mean(0))
            vectors.append(torch.nn.functional.normalize(v, dim=-1) if s.get("normalize") else v)
    ref_vec = torch.stack(vectors)
    texts = list(inputs.sentences)  # normalize=False: normalised only if the file says so
    batched = embed_texts(ours, texts, batch_size=len(texts), normalize=False)
    single = np.concatenate([embed_texts(ours, [t], normalize=False) for t in texts])
    out.append(
        compare_vectors(
            "sentence_embedding", single, ref_vec, th, top1=nearest_agreement(single, ref_vec)
        )
    )
    out.append(compare_vectors("sentence_embedding_batched", batched, ref_vec, th,
                               top1=nearest_agreement(batched, ref_vec)))  # fmt: skip
    return out


def _load_16k(path) -> np.ndarray:
    import librosa

    audio, _ = librosa.load(str(path), sr=16000, mono=True)
    return audio.astype(np.float32)


def run_whisper(
    ours, ref: Reference, inputs: ValidationInputs, th: Thresholds
) -> list[OutputResult]:
    """Mean-pooled encoder embeddings, encoder states and greedy transcriptions."""
    from transformers import WhisperFeatureExtractor

    if not inputs.speech:
        return []
    fe = WhisperFeatureExtractor(feature_size=ours.config.n_mels)
    hf = ref.model
    ref_emb, ref_texts, states = [], [], []
    with torch.inference_mode():
        for path in inputs.speech:
            audio = _load_16k(path)
            feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
            h = hf.model.encoder(feats).last_hidden_state[0]  # (1500, C)
            frames = min(max(1, math.ceil(len(audio) / ours.samples_per_frame)), h.shape[0])
            ref_emb.append(h[:frames].double().mean(0))
            ours_h = ours.encode(feats)[0]  # same features: isolates the encoder
            states.append((ours_h[:frames], h[:frames]))
            ids = hf.generate(feats, language=inputs.language, task="transcribe")
            ref_texts.append(ref.tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    emb = embed_audio(ours, [str(p) for p in inputs.speech], normalize=False).vectors
    our_texts = [ours.transcribe(str(p), language=inputs.language) for p in inputs.speech]
    enc = compare_vectors(
        "encoder_states", torch.cat([a for a, _ in states]), torch.cat([b for _, b in states]), th
    )
    enc.detail = (enc.detail + " (cosine per frame)").strip()
    return [
        compare_vectors("audio_embedding", emb, torch.stack(ref_emb), th),
        enc,
        compare_texts("transcription", our_texts, ref_texts, th),
    ]


def _prompt_ids(ours, ref: Reference, inputs: ValidationInputs) -> tuple[list, list, list[str]]:
    names, our_ids, ref_ids = [], [], []
    for p in inputs.prompts:
        names.append(f"completion {p[:24]!r}")
        our_ids.append(list(ours.tokenizer.encode(p, add_special_tokens=True)))
        ref_ids.append(list(ref.tokenizer(p).input_ids))
    if getattr(ref.tokenizer, "chat_template", None) and inputs.chat_prompts:
        for p in inputs.chat_prompts:
            messages = [{"role": "user", "content": p}]
            names.append(f"chat {p[:24]!r}")
            text = ours.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            our_ids.append(list(ours.tokenizer.encode(text, add_special_tokens=False)))
            ref_text = ref.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            ref_ids.append(list(ref.tokenizer(ref_text, add_special_tokens=False).input_ids))
    return our_ids, ref_ids, names


def run_causal_lm(
    ours, ref: Reference, inputs: ValidationInputs, th: Thresholds
) -> list[OutputResult]:
    """Prompt token ids, prefill logits (cosine per position, top-1) and greedy generation."""
    our_ids, ref_ids, names = _prompt_ids(ours, ref, inputs)
    if not ref_ids:
        return []
    out = [_ids_output("prompt_token_ids", our_ids, ref_ids)]
    hf = ref.model
    ours_logits, ref_logits, ours_new, ref_new = [], [], [], []
    eos = set(ours.config.eos_token_ids)
    with torch.inference_mode():
        for ids in ref_ids:
            x = torch.tensor([ids])
            ours_logits.append(ours.logits(x)[0].float())
            ref_logits.append(hf(input_ids=x).logits[0].float())
            gen = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=inputs.max_new_tokens,
                              do_sample=False, eos_token_id=sorted(eos) or None,
                              pad_token_id=(sorted(eos) or [0])[0])[0, len(ids):].tolist()  # fmt: skip
            ref_new.append(_cut(gen, eos))
            ours_new.append(ours.generate_ids(ids, max_new_tokens=inputs.max_new_tokens))
    a, b = torch.cat(ours_logits), torch.cat(ref_logits)
    top1 = float((a.argmax(-1) == b.argmax(-1)).double().mean())
    out.append(compare_vectors("prefill_logits", a, b, th, kind="logits", top1=top1))
    greedy = compare_sequences(f"greedy_{inputs.max_new_tokens}_tokens", ours_new, ref_new, th)
    greedy.detail = greedy.detail.replace("input ", "prompt ") + f" [{', '.join(names)}]"
    out.append(greedy)
    return out


def _cut(tokens: list[int], eos: set[int]) -> list[int]:
    """Tokens before the first end-of-sequence id (ours returns them without it)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


RUNNERS = {
    "clip": run_clip,
    "bert": run_bert,
    "whisper": run_whisper,
    "olmo": run_causal_lm,
    "llama": run_causal_lm,
}
