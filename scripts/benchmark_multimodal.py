#!/usr/bin/env python
"""Speed floor: ours / HF transformers per family, on the same weights, in one run.

    python scripts/benchmark_multimodal.py [--families clip,minilm,whisper,olmo,smollm2] [--quick]
        [--json artifacts/benchmarks/multimodal.json] [--runs 5] [--work DIR]
        [--dtypes float32,bfloat16,int8] [--backends torch,onnxruntime] [--memory]

Per family: load-to-first-result (fresh processes for both, time from process start to the first
result line; after one untimed run per side, with bytecode caches as an installed package has them), batch-1 latency, batched throughput (CLIP b16, MiniLM b64 x 32 tokens, Whisper
encoder b4, OLMo b8 x 128 prefill), Whisper transcription of the speech fixture and LLM decode
tokens/s (greedy, 64 new tokens). Medians of ``--runs`` runs after one warm-up, ours and HF
interleaved, torch.set_num_threads(2) on both sides, float32. A ratio is ours / HF for times
(<= 1.0 is the target) and for throughputs (>= 1.0 is the target).

``--backends torch,onnxruntime`` adds our ONNX Runtime backend (``load_model(...,
backend="onnxruntime")``, float32 and int8) for the encoders, interleaved with HF in the same run;
its MiniLM cold start is ``load_model`` + tokenizer + ``encode_text`` in a process that never
imports torch. CLIP vision b16 and MiniLM b64 rows carry ``accuracy``: relative L2 of our
features to HF's (CLIP) and the mean and lowest cosine of our sentence vectors to HF's (MiniLM).
``--memory`` measures both backends (ONNX Runtime: over the bytes of the rows its graphs take).

Weights: MiniLM, Whisper base and SmolLM2 are the real packaged checkpoints (Whisper's HF folder
is built from the CTranslate2 tensors, SmolLM2's from the dequantized GGUF, so both sides hold
the same float32 values); CLIP ViT-B/32 and OLMo (OLMo-2 layout, 12 layers x 1024, mlp 4096,
vocab 100352 tied: 304M params) are random-init real shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

THREADS = 2
FAMILIES = ("clip", "minilm", "whisper", "olmo", "smollm2")
ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "fixtures" / "hello_world.wav"
PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


# -- weights: the same values for both sides ------------------------------------------------------
def prepare(family: str, work: Path) -> dict[str, Path]:
    """{"ours": weight file, "hf": HF folder} for ``family``, built once under ``work``."""
    from llm_compression.convert import convert

    hf, ours = work / f"{family}-hf", work / f"{family}.parquet"
    if not (hf / "config.json").is_file():
        _make_hf(family, hf)
    if not _readable(ours):
        convert(hf, ours, dtype="float32")
    return {"hf": hf, "ours": ours}


def _readable(path: Path) -> bool:
    """Whether ``path`` is a weight file the current code reads (the format may have moved on)."""
    from llm_compression.errors import FormatError
    from llm_compression.weightfile import read_metadata

    try:
        return path.is_file() and read_metadata(path).format_version is not None
    except FormatError:
        return False


def _make_hf(family: str, folder: Path) -> None:
    import shutil

    from llm_compression import weights
    from llm_compression.convert import random_init

    if family == "clip":
        random_init.save_random_clip(folder)
    elif family == "olmo":
        random_init.save_random_olmo(
            folder, version=2, n_layers=12, hidden_size=1024, intermediate_size=4096,
            tie_word_embeddings=True,
        )  # fmt: skip
    elif family == "minilm":
        shutil.copytree(weights.packaged_minilm(), folder)
    elif family == "whisper":
        from llm_compression.validation.hf_whisper import whisper_from_ct2
        from llm_compression.validation.reference import tokenizer_from_files

        src = weights.packaged_whisper_base()
        tok = tokenizer_from_files({"tokenizer.json": (src / "tokenizer.json").read_bytes()})
        model, _ = whisper_from_ct2(src / "model.bin", tok)
        model.generation_config._from_model_config = False  # else from_pretrained rebuilds it
        model.save_pretrained(folder)
        shutil.copyfile(src / "tokenizer.json", folder / "tokenizer.json")
    elif family == "smollm2":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = weights.packaged_smollm2()
        kw = {"gguf_file": gguf.name}
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype="float32", **kw)
        config = loaded.config
        config.quantization_config = None  # a GGUF-loaded model refuses save_pretrained
        fresh = type(loaded)(config)
        fresh.load_state_dict(loaded.state_dict())
        fresh.save_pretrained(folder)
        AutoTokenizer.from_pretrained(gguf.parent, **kw).save_pretrained(folder)


# -- timing ----------------------------------------------------------------------------------------
def machine() -> dict:
    """The CPU a run measured: ratios to HF differ between CPUs (torch's float32 GEMV on AMD,
    oneDNN's AMX tiles on recent Xeons), so each result file says which it came from."""
    info = {"cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in ("model name", "cpu family", "model") and key not in info:
                    info[key] = value
                elif key == "flags":
                    flags = set(value.split())
                    info["flags"] = sorted(flags & {"avx512_vnni", "avx512_bf16", "amx_int8"})
                    break
    except OSError:  # not Linux
        pass
    return info


def timed_pair(ours, hf, runs: int) -> tuple[float, float]:
    """Median seconds of ``ours()`` and ``hf()``, interleaved, after one warm-up each."""
    ours(), hf()
    a, b = [], []
    for _ in range(runs):
        for fn, out in ((ours, a), (hf, b)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def row(family, metric, unit, ours, hf, higher_is_better=False) -> dict:
    ratio = ours / hf
    ok = ratio >= 1.0 if higher_is_better else ratio <= 1.0
    return dict(family=family, metric=metric, unit=unit, ours=ours, hf=hf, ratio=ratio,
                target=">= 1.0" if higher_is_better else "<= 1.0", ok=ok)  # fmt: skip


def latency(family, metric, ours, hf, runs) -> dict:
    a, b = timed_pair(ours, hf, runs)
    return row(family, metric, "ms", a * 1e3, b * 1e3)


def throughput(family, metric, unit, n, ours, hf, runs) -> dict:
    a, b = timed_pair(ours, hf, runs)
    return row(family, metric, unit, n / a, n / b, higher_is_better=True)


# -- fresh process to first result -----------------------------------------------------------------
PRELUDE = f"import torch; torch.set_num_threads({THREADS}); torch.set_grad_enabled(False)\n"
COLD = {
    ("clip", "ours"): "from llm_compression.provider import CLIPEngine\n"
    "CLIPEngine(OURS).encode_image([IMAGE])",
    (
        "clip",
        "hf",
    ): "from transformers import CLIPImageProcessor, CLIPModel\nfrom PIL import Image\n"
    "m = CLIPModel.from_pretrained(HF).eval(); p = CLIPImageProcessor()\n"
    "m.get_image_features(**p(images=Image.open(IMAGE).convert('RGB'), return_tensors='pt'))",
    ("minilm", "ours"): "from llm_compression.provider import MultimodalEmbeddingProvider\n"
    "MultimodalEmbeddingProvider(text_model=OURS).encode(['A photo of a cat.'])",
    ("minilm", "hf"): "from transformers import AutoTokenizer, BertModel\n"
    "t = AutoTokenizer.from_pretrained(HF); m = BertModel.from_pretrained(HF).eval()\n"
    "h = m(**t(['A photo of a cat.'], return_tensors='pt')).last_hidden_state\n"
    "torch.nn.functional.normalize(h.mean(1), dim=-1)",
    ("whisper", "ours"): "from llm_compression.loader import load_model\n"
    "load_model(OURS).transcribe(SPEECH, language='en')",
    ("whisper", "hf"): "import soundfile as sf\n"
    "from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor, "
    "WhisperForConditionalGeneration\n"
    "m = WhisperForConditionalGeneration.from_pretrained(HF).eval()\n"
    "t = PreTrainedTokenizerFast(tokenizer_file=HF + '/tokenizer.json')\n"
    "a, sr = sf.read(SPEECH, dtype='float32')\n"
    "f = WhisperFeatureExtractor(feature_size=m.config.num_mel_bins)(a, sampling_rate=sr, "
    "return_tensors='pt').input_features\n"
    "t.decode(m.generate(f, language='en')[0], skip_special_tokens=True)",
    ("olmo", "ours"): "from llm_compression.loader import load_model\n"
    "m = load_model(OURS); m.generate_ids(m.tokenizer.encode(PROMPT), max_new_tokens=1)",
    ("olmo", "hf"): "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    "t = AutoTokenizer.from_pretrained(HF); m = AutoModelForCausalLM.from_pretrained(HF).eval()\n"
    "m.generate(**t(PROMPT, return_tensors='pt'), max_new_tokens=1, do_sample=False)",
}
COLD[("smollm2", "ours")], COLD[("smollm2", "hf")] = COLD[("olmo", "ours")], COLD[("olmo", "hf")]
# the ONNX Runtime backend: no torch in the process (no PRELUDE), graphs already cached
COLD[("minilm", "ours-onnxruntime")] = (
    "import llm_compression as lc\n"
    "m = lc.load_model(OURS, backend='onnxruntime')\n"
    "ids, mask = m.tokenizer.encode_batch(['A photo of a cat.'], max_length=m.text_context)\n"
    "v = m.encode_text(ids, mask); v / (v * v).sum(-1, keepdims=True) ** 0.5\n"
    "import sys; assert 'torch' not in sys.modules"
)


PYCACHE = Path(tempfile.gettempdir()) / "llm_compression-bench-pycache"


def cold_start(family: str, paths: dict[str, Path], side: str) -> float:
    """Seconds from process start to the line printed after the first result."""
    consts = dict(OURS=str(paths["ours"]), HF=str(paths["hf"]), IMAGE=str(_photo()),
                  SPEECH=str(SPEECH), PROMPT=PROMPT)  # fmt: skip
    code = "".join(f"{k} = {v!r}\n" for k, v in consts.items())
    prelude = "" if side.endswith("onnxruntime") else PRELUDE
    code += prelude + COLD[(family, side)] + "\nprint('FIRST', flush=True)\n"
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as after `pip install`: set in
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)  # this sandbox, it recompiled every module each time
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    for line in proc.stdout:
        if line.startswith("FIRST"):
            elapsed = time.perf_counter() - start
            break
    else:
        raise RuntimeError(f"{family}/{side} cold start printed no result (exit {proc.wait()})")
    proc.wait()
    return elapsed


def cold_row(family: str, paths: dict[str, Path], runs: int, backend: str = "torch") -> dict:
    side = "ours" if backend == "torch" else f"ours-{backend}"
    if backend == "onnxruntime":  # the graphs are exported once per config, before timing
        from llm_compression.loader import load_model

        load_model(paths["ours"], backend=backend)
    for warm_up in (side, "hf"):  # untimed: writes the bytecode caches, reads the files once
        cold_start(family, paths, warm_up)
    a, b = [], []
    for _ in range(runs):
        a.append(cold_start(family, paths, side))
        b.append(cold_start(family, paths, "hf"))
    return row(family, "load to first result (fresh process)", "s", statistics.median(a),
               statistics.median(b))  # fmt: skip


def _photo() -> Path:
    from llm_compression.validation.inputs import photo_paths

    return photo_paths(("chelsea.png",))[0]


# -- warm measurements per family ------------------------------------------------------------------
def _rel_l2(a, b) -> float:
    a, b = (np.asarray(x, np.float64) for x in (a, b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cosines(a, b) -> dict[str, float]:
    a, b = (np.asarray(x, np.float64) for x in (a, b))
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    return {"mean_cosine_to_hf": float(cos.mean()), "min_cosine_to_hf": float(cos.min())}


def bench_clip(paths, runs, quick, dtype="float32", backend="torch"):
    from transformers import CLIPModel

    from llm_compression.loader import load_model
    from llm_compression.validation.inputs import photo_paths

    ours = load_model(paths["ours"], dtype=dtype, backend=backend)
    hf = CLIPModel.from_pretrained(paths["hf"]).eval()
    from llm_compression.preprocess.image import clip_pixels
    from llm_compression.provider.modalities import text_ids

    c = ours.config
    px = clip_pixels(list(photo_paths()), size=c.image_size, mean=c.image_mean, std=c.image_std)
    px1, px16 = px[:1], px.repeat(4, 1, 1, 1)[:16]
    ids = torch.from_numpy(text_ids(ours, ["a photo of a cat sitting on a sofa"])[0])
    with torch.inference_mode():
        rows = [
            latency("clip", "vision batch-1 latency", lambda: ours.encode_image(px1),
                    lambda: hf.get_image_features(pixel_values=px1), runs),
            throughput("clip", "vision b16 throughput", "images/s", 16,
                       lambda: ours.encode_image(px16),
                       lambda: hf.get_image_features(pixel_values=px16), max(2, runs // 2)),
            latency("clip", "text batch-1 latency", lambda: ours.encode_text(ids),
                    lambda: hf.get_text_features(input_ids=ids), runs),
        ]  # fmt: skip
        feats = _features(hf.get_image_features(pixel_values=px16))
        rows[1]["accuracy"] = {"rel_l2_to_hf": _rel_l2(_features(ours.encode_image(px16)), feats)}
    return rows


def _features(x):
    """Model output (torch tensor, numpy array or HF output object) -> numpy float32."""
    x = getattr(x, "pooler_output", x)
    return x.float().numpy() if hasattr(x, "float") else np.asarray(x, np.float32)


def bench_minilm(paths, runs, quick, dtype="float32", backend="torch"):
    from transformers import BertModel

    from llm_compression.loader import load_model

    ours = load_model(paths["ours"], dtype=dtype, backend=backend)
    hf = BertModel.from_pretrained(paths["hf"]).eval()
    g = torch.Generator().manual_seed(0)
    ids1, ids64 = (torch.randint(1000, 20000, (b, 32), generator=g) for b in (1, 64))

    def ref(ids):
        h = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        return torch.nn.functional.normalize(h.mean(1), dim=-1)

    with torch.inference_mode():
        rows = [
            latency("minilm", "batch-1 latency (32 tokens)", lambda: ours.encode_text(ids1),
                    lambda: ref(ids1), runs),
            throughput("minilm", "b64 x 32 tokens throughput", "sentences/s", 64,
                       lambda: ours.encode_text(ids64), lambda: ref(ids64), runs),
        ]  # fmt: skip
        rows[1]["accuracy"] = _cosines(_features(ours.encode_text(ids64)), _features(ref(ids64)))
    return rows


def bench_whisper(paths, runs, quick, dtype="float32", backend="torch"):
    import soundfile as sf
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    from llm_compression.loader import load_model

    ours = load_model(paths["ours"], dtype=dtype, backend=backend)
    hf = WhisperForConditionalGeneration.from_pretrained(paths["hf"]).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(paths["hf"] / "tokenizer.json"))
    fe = WhisperFeatureExtractor(feature_size=ours.config.n_mels)
    audio, sr = sf.read(str(SPEECH), dtype="float32")
    mel1 = fe(audio, sampling_rate=sr, return_tensors="pt").input_features
    mel4 = mel1.repeat(4, 1, 1)

    def hf_transcribe():
        f = fe(audio, sampling_rate=sr, return_tensors="pt").input_features
        return tok.decode(hf.generate(f, language="en")[0], skip_special_tokens=True)

    def encode(mel):  # ONNX Runtime runs the pooled encoder (mean over all 1500 frames)
        if backend == "torch":
            return ours.encode(mel)
        return ours.encode_audio(mel, np.full(mel.shape[0], 1500))

    with torch.inference_mode():
        out = [
            latency("whisper", "encoder batch-1 latency (30 s window)", lambda: encode(mel1),
                    lambda: hf.model.encoder(mel1), runs),
            throughput("whisper", "encoder b4 throughput", "clips/s", 4,
                       lambda: encode(mel4), lambda: hf.model.encoder(mel4), max(2, runs // 2)),
        ]  # fmt: skip
        if backend == "torch":  # decoding stays on torch
            out.append(latency("whisper", "transcription of the speech fixture",
                               lambda: ours.transcribe(audio, language="en"), hf_transcribe, runs))  # fmt: skip
            same = ours.transcribe(audio, language="en") == hf_transcribe().strip()
            out[-1]["metric"] += f" (text {'identical' if same else 'DIFFERS'})"
            out[-1]["ok"] = out[-1]["ok"] and same
            out[-1]["peers"] = faster_whisper_peers(audio, hf_transcribe, runs, dtype)
    return out


def faster_whisper_peers(audio, hf_transcribe, runs: int, dtype: str) -> dict[str, str]:
    """faster-whisper (CTranslate2) on the same Whisper base weights, greedy, timed interleaved
    with HF: its speed-up over HF and whether its text equals HF's. Empty when it is not
    installed (the optional ``bench`` extra)."""
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        return {}
    from llm_compression import weights

    try:
        peer = WhisperModel(str(weights.packaged_whisper_base()), device="cpu",
                            compute_type=dtype, cpu_threads=THREADS)  # fmt: skip
    except ValueError as e:  # CTranslate2 has no kernels for this dtype on this CPU
        return {f"faster-whisper {dtype}": f"not run ({e})"}

    def transcribe():
        found, _ = peer.transcribe(audio, language="en", beam_size=1, without_timestamps=True,
                                   vad_filter=False, condition_on_previous_text=False,
                                   temperature=0.0)  # fmt: skip
        return "".join(s.text for s in found).strip()

    theirs, hf = timed_pair(transcribe, hf_transcribe, runs)
    same = transcribe() == hf_transcribe().strip()
    return {f"faster-whisper {dtype}": f"{hf / theirs:.2f}x, text {'= HF' if same else 'differs'}"}


def _decode_rows(family, ours, hf, runs, quick):
    ids = ours.tokenizer.encode(PROMPT)
    x = torch.tensor([ids])
    counts = {}

    def ours_gen():
        counts["ours"] = len(ours.generate_ids(ids, max_new_tokens=64))

    def hf_gen():
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=64, do_sample=False)
        counts["hf"] = out.shape[1] - x.shape[1]

    a, b = timed_pair(ours_gen, hf_gen, max(2, runs // 2) if quick else runs)
    r = row(family, "greedy decode, 64 new tokens", "tokens/s", counts["ours"] / a,
            counts["hf"] / b, higher_is_better=True)  # fmt: skip
    r["tokens"] = dict(counts)
    return [r]


def bench_olmo(paths, runs, quick):
    from transformers import AutoModelForCausalLM

    from llm_compression.loader import load_model

    ours, hf = load_model(paths["ours"]), AutoModelForCausalLM.from_pretrained(paths["hf"]).eval()
    g = torch.Generator().manual_seed(0)
    ids16, ids8 = (
        torch.randint(100, 50000, (1, 16), generator=g),
        torch.randint(100, 50000, (8, 128), generator=g),
    )
    with torch.inference_mode():
        out = [
            latency("olmo", "prefill batch-1 latency (16 tokens)", lambda: ours.logits(ids16),
                    lambda: hf(input_ids=ids16).logits, runs),
            throughput("olmo", "b8 x 128 prefill throughput", "sequences/s", 8,
                       lambda: ours.logits(ids8), lambda: hf(input_ids=ids8).logits, max(2, runs // 2)),
        ]  # fmt: skip
    return out + _decode_rows("olmo", ours, hf, runs, quick)


def bench_smollm2(paths, runs, quick):
    from transformers import AutoModelForCausalLM

    from llm_compression.loader import load_model

    ours, hf = load_model(paths["ours"]), AutoModelForCausalLM.from_pretrained(paths["hf"]).eval()
    ids = torch.tensor([ours.tokenizer.encode(PROMPT)])
    with torch.inference_mode():
        out = [latency("smollm2", f"prefill batch-1 latency ({ids.shape[1]} tokens)",
                       lambda: ours.logits(ids), lambda: hf(input_ids=ids).logits, runs)]  # fmt: skip
    return out + _decode_rows("smollm2", ours, hf, runs, quick)


# -- peak resident memory while loading (fresh process) --------------------------------------------
MEMORY = """
import os, threading, time, torch
torch.set_num_threads({threads})
from llm_compression.core.compute import compute_bytes
from llm_compression.loader import load_model
page, peak, done = os.sysconf("SC_PAGE_SIZE"), [0], threading.Event()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
def watch():  # ru_maxrss would count the imports' own peak: sample resident pages instead
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.0005)
base = rss(); t = threading.Thread(target=watch); t.start()
model = load_model({path!r}, dtype={dtype!r})
done.set(); t.join(); peak[0] = max(peak[0], rss())
print("MEM", peak[0] - base, compute_bytes(model), rss() - base)
"""


# the ONNX Runtime backend: no torch; the model's bytes are those of the rows its graphs take
MEMORY_ORT = MEMORY.replace("import os, threading, time, torch", "import os, threading, time")
MEMORY_ORT = MEMORY_ORT.replace(
    "from llm_compression.loader", "import onnxruntime\nfrom llm_compression.loader"
)
MEMORY_ORT = (
    MEMORY_ORT.replace("torch.set_num_threads({threads})\n", "")
    .replace("from llm_compression.core.compute import compute_bytes\n", "")
    .replace("dtype={dtype!r})", "dtype={dtype!r}, backend='onnxruntime')")
    .replace("compute_bytes(model)", "ort_bytes(model)")
)
MEMORY_ORT = (
    """
def ort_bytes(model):
    from llm_compression.onnxrt.graphs import INT8_ROWS, INT8_SCALE, INT8_WEIGHT
    total = 0
    for part in model.info["parts"].values():
        for name in part[model.compute_dtype]:
            base = name.removesuffix(INT8_WEIGHT).removesuffix(INT8_ROWS).removesuffix(INT8_SCALE)
            info = model.file.tensors[base]
            if name.endswith((INT8_WEIGHT, INT8_ROWS)):
                total += info.n_params
            else:
                total += 4 * (info.shape[0] if name.endswith(INT8_SCALE) else info.n_params)
    return total
"""
    + MEMORY_ORT
)


def memory_row(family: str, paths: dict[str, Path], dtype: str, backend: str = "torch") -> dict:
    """Peak RSS growth while ``load_model`` runs, over the model's bytes in its compute dtype."""
    template = MEMORY if backend == "torch" else MEMORY_ORT
    code = template.format(threads=THREADS, path=str(paths["ours"]), dtype=dtype)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown, model, kept = map(int, out.stdout.split("MEM")[-1].split())
    r = dict(family=family, dtype=dtype, metric="peak RSS while loading / model bytes",
             unit=f"x of {model / 1e6:.0f} MB", ours=grown / model, hf=float("nan"),
             ratio=grown / model, target="<= 1.2", ok=grown / model <= 1.2,
             notes={"resident after loading": f"{kept / 1e6:.0f} MB"})  # fmt: skip
    return r


# issues #11 (encoders) and #12 (whisper transcription): speed ratios to HF float32 (same run)
# per (family, metric prefix, dtype)
ISSUE_TARGETS = {
    ("clip", "vision batch-1", "float32"): 2.5, ("clip", "vision b16", "float32"): 2.5,
    ("clip", "vision b16", "bfloat16"): 3.5, ("clip", "vision b16", "int8"): 5.5,
    ("minilm", "batch-1", "float32"): 3.0, ("minilm", "b64", "float32"): 2.0,
    ("minilm", "batch-1", "int8"): 5.6, ("whisper", "encoder", "float32"): 1.6,
    ("minilm", "load to first", "float32"): 1 / 0.4,
    ("whisper", "transcription", "float32"): 1.7, ("whisper", "transcription", "int8"): 2.6,
}  # fmt: skip


def issue_target(r: dict) -> float | None:
    for (fam, prefix, dtype), target in ISSUE_TARGETS.items():
        if r["family"] == fam and r["metric"].startswith(prefix) and r["dtype"] == dtype:
            return target
    return None


DTYPE_FAMILIES = ("clip", "minilm", "whisper")  # the encoders; the LMs belong to issue #12
BENCHES = {"clip": bench_clip, "minilm": bench_minilm, "whisper": bench_whisper,
           "olmo": bench_olmo, "smollm2": bench_smollm2}  # fmt: skip


def _speedup(r: dict) -> str:
    """HF's time over ours (> 1: we are faster) and the issue's target for it, if any."""
    if r["hf"] != r["hf"]:  # nan: no HF side
        return "-"
    speed = r["ratio"] if r["target"] == ">= 1.0" else 1 / r["ratio"]
    target = issue_target(r)
    return f"{speed:.2f}x" + (f" (target {target:.2f}x)" if target else "")


def table(rows: list[dict]) -> str:
    head = (
        "| family | backend | dtype | metric | ours | HF | unit | ours/HF | speed-up | target | ok "
        "| accuracy; peers |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r['family']} | {r.get('backend', 'torch')} | {r.get('dtype', 'float32')} | "
        f"{r['metric']} | {r['ours']:.4g} | "
        f"{r['hf']:.4g} | {r['unit']} | {r['ratio']:.2f} | {_speedup(r)} | {r['target']} | "
        f"{'yes' if r['ok'] else '**NO**'} | "
        + "; ".join(
            [", ".join(f"{k} {v:.4f}" for k, v in r.get("accuracy", {}).items())]
            + [f"{k} {v}" for k, v in {**r.get("peers", {}), **r.get("notes", {})}.items()]
        ).strip("; ")
        + " |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset")
    p.add_argument("--quick", action="store_true", help="fewer runs, one cold start per side")
    p.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 5)")
    p.add_argument("--json", default="artifacts/benchmarks/multimodal.json", help="output JSON")
    p.add_argument("--work", default=None, help="where converted weights are cached")
    p.add_argument("--no-cold", action="store_true", help="skip the fresh-process measurement")
    p.add_argument(
        "--dtypes",
        default="float32",
        help="compute modes of ours for clip/minilm/whisper: float32,bfloat16,int8",
    )
    p.add_argument(
        "--backends", default="torch",
        help="backends of ours for clip/minilm/whisper: torch,onnxruntime (float32 / int8 only)",
    )  # fmt: skip
    p.add_argument("--memory", action="store_true", help="peak RSS while loading, per dtype")
    args = p.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        p.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    torch.set_num_threads(THREADS)
    runs = args.runs or (2 if args.quick else 5)
    from llm_compression.weights import cache_dir

    work = Path(args.work) if args.work else cache_dir() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for family in families:
        paths = prepare(family, work)
        for backend in backends if family in DTYPE_FAMILIES else ("torch",):
            if not args.no_cold and (backend == "torch" or family == "minilm"):
                cold = cold_row(family, paths, 1 if args.quick else 3, backend)
                rows.append({**cold, "dtype": "float32", "backend": backend})
            for dtype in dtypes if family in DTYPE_FAMILIES else ("float32",):
                if backend == "onnxruntime" and dtype == "bfloat16":
                    continue  # ONNX Runtime's CPU kernels: float32 and int8
                kw = {"dtype": dtype, "backend": backend} if family in DTYPE_FAMILIES else {}
                measured = BENCHES[family](paths, runs, args.quick, **kw)
                rows += [{**r, "dtype": dtype, "backend": backend} for r in measured]
                if args.memory:
                    rows.append({**memory_row(family, paths, dtype, backend), "backend": backend})
        print(table([r for r in rows if r["family"] == family]).split("\n", 2)[-1], flush=True)
    print(table(rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(threads=THREADS, runs=runs, quick=args.quick, torch=torch.__version__,
                python=sys.version.split()[0], load_average=os.getloadavg(), machine=machine(),
                time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
    import transformers

    meta["transformers"] = transformers.__version__
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
