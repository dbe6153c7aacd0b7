"""Greedy decode speed of our float32 / int8 / int4 causal LMs against Hugging Face float32, and how
often the quantized greedy text equals float32's.

    PYTHONPATH=. python scripts/benchmark_generate.py [--families smollm2,olmo] [--runs 3]
        [--threads 2] [--agreement 20] [--batch 8] [--memory] [--per-matrix]
        [--accuracy-levels 1]

Variants: ours float32 (torch), float32-graph (``backend="onnxruntime"``: the float32 matrices on
the decoder graph), int8 (the float32 file quantized on load, a float16 scale a group of 32) and
int4 (the GGUF's blocks) on our C decoder (``core.native_decoder``, where the CPU has
AVX512-VNNI), int8-file (the file ``convert(..., dtype="int8")`` writes: a float32 scale a row) on
it too, int8-ort and int4-ort (the decoder graph's ``MatMulNBits``); with the ``bench`` extra
(llama-cpp-python) ``llama.cpp`` runs the packaged GGUF itself (Q4_1 blocks, the same prompt ids,
greedy), in the speed and agreement rows (it decodes one prompt at a time: no batch row).
Every variant and HF run interleaved in the same process (64 new tokens, batch 1); ratios are
tokens/s over HF's; the load average is printed with them. ``--batch 8`` adds, per variant, the
tokens/s of 8 prompts decoded together over the tokens/s of one. ``--memory`` loads each variant
in a fresh process and reports its peak resident memory above the process's baseline (imports
done) after 64 greedy tokens, over the file size. Weights: the same as
scripts/benchmark_multimodal.py (SmolLM2 from the packaged Q4_1 GGUF; a random OLMo-2 of its shape).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_multimodal import PROMPT, machine, prepare  # noqa: E402

PROMPTS = [
    "The capital of France is", "Once upon a time", "def fibonacci(n):", "The best way to learn",
    "In 1969, astronauts", "Water boils at", "My favourite recipe for soup", "The theory of relativity",
    "A haiku about autumn:", "Dear hiring manager,", "The three primary colours are",
    "To install Python on Linux,", "The stock market today", "Photosynthesis is the process",
    "Here is a list of fruits:", "The meaning of life is", "Translate to French: good morning",
    "The quick brown fox", "Machine learning models", "Tomorrow the weather will be",
]  # fmt: skip


def variants(family: str, paths: dict, work: Path, per_matrix: bool, levels: list[int]) -> dict:
    """The models compared; ``per_matrix`` adds each quantized variant on one ORT session per
    matrix (``load_quantized(..., graph=False)``, the path before the decoder graph); each of
    ``levels`` adds the quantized variants at that ``MatMulNBits`` accuracy level (``int8-acc1``:
    float32 activations) beside the default (4: int8 activations)."""
    from llm_compression.convert import convert
    from llm_compression.core import quantized
    from llm_compression.families.quantized import load_quantized
    from llm_compression.loader import load_model

    out = {
        "float32": load_model(paths["ours"]),
        "float32-graph": load_model(paths["ours"], backend="onnxruntime"),  # ORT's FusedMatMul
        "int8": load_model(paths["ours"], dtype="int8"),
        "int8-file": load_model(int8_file(family, paths, work), dtype="int8"),
        "int8-ort": load_model(paths["ours"], dtype="int8", backend="onnxruntime"),
    }
    if family == "smollm2":
        from llm_compression import weights

        kept = work / "smollm2.gguf.parquet"
        if not kept.is_file():
            convert(weights.packaged_smollm2(), kept, dtype="gguf")
        out["int4"] = load_model(kept, dtype="int4")
        out["int4-ort"] = load_model(kept, dtype="int4", backend="onnxruntime")
    files = {"int8": paths["ours"], "int4": work / "smollm2.gguf.parquet"}
    for dtype in [d for d in ("int8", "int4") if per_matrix and d in out]:
        out[f"{dtype}-per-matrix"] = load_quantized(files[dtype], dtype, graph=False)
        out[f"{dtype}-per-matrix"].tokenizer = out[dtype].tokenizer
    default = quantized.ACCURACY_LEVEL
    for level in [n for n in levels if n != default]:
        quantized.ACCURACY_LEVEL = level
        for dtype in [d for d in ("int8", "int4") if d in out]:
            out[f"{dtype}-acc{level}"] = load_model(files[dtype], dtype=dtype)
        quantized.ACCURACY_LEVEL = default
    return out


class LlamaCpp:
    """llama-cpp-python on a GGUF as one more variant: ``generate_ids`` greedy from the same
    prompt ids (our tokenizer's: the GGUF's vocabulary), stopping at its end-of-text."""

    batches = False  # one prompt at a time

    def __init__(self, gguf: Path, threads: int, tokenizer) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=threads,
                         n_threads_batch=threads, verbose=False)  # fmt: skip
        self.tokenizer, self.eos = tokenizer, self.llm.token_eos()

    def generate_ids(self, ids: list[int], max_new_tokens: int = 64, min_new_tokens: int = 0):
        """(min_new_tokens: an end-of-sequence token before it is kept and decoding goes on,
        where ours takes the next best token: the same number of steps timed)"""
        out: list[int] = []
        for token in self.llm.generate(list(ids), temp=0.0, reset=True):  # temp 0: argmax
            if token == self.eos and len(out) >= min_new_tokens:
                break
            out.append(token)
            if len(out) == max_new_tokens:
                break
        return out


def llama_cpp(family: str, threads: int, tokenizer) -> dict:
    """{"llama.cpp": LlamaCpp} for SmolLM2 where llama-cpp-python is installed, else {}."""
    if family != "smollm2":
        return {}
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return {}
    from llm_compression import weights

    return {"llama.cpp": LlamaCpp(weights.packaged_smollm2(), threads, tokenizer)}


# every row decodes 64 tokens, as HF's min_new_tokens=64 makes it (an end-of-sequence token
# would end a row early: fewer steps timed, and a batch shrinking as it runs)
SIXTY_FOUR = dict(max_new_tokens=64, min_new_tokens=64)


def speed(models: dict, hf, ids: list[int], runs: int) -> dict:
    x = torch.tensor([ids])
    calls = {
        name: (lambda m=m: len(m.generate_ids(ids, **SIXTY_FOUR))) for name, m in models.items()
    }
    calls["hf"] = lambda: hf.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=64, min_new_tokens=64, do_sample=False
    ).shape[1] - x.shape[1]  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        fn()  # warm-up
    for _ in range(runs):
        for name, fn in calls.items():
            start = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - start))
    med = {name: statistics.median(r) for name, r in rates.items()}
    return {
        name: {"tokens_per_s": round(v, 2), "x_hf": round(v / med["hf"], 2)}
        for name, v in med.items()
    }


def batch_speed(models: dict, tokenizer, batch: int, runs: int) -> dict:
    """Per variant: new tokens/s of ``batch`` prompts decoded together over that of the first
    prompt alone (both generate 64 tokens, EOS ignored via min length: rows run to the end)."""
    rows = [tokenizer.encode(p) for p in PROMPTS[:batch]]
    out = {}
    for name, m in [(n, m) for n, m in models.items() if getattr(m, "batches", True)]:
        one = lambda m=m: len(m.generate_ids(rows[0], **SIXTY_FOUR))  # noqa: E731
        many = lambda m=m: sum(map(len, m.generate_ids(rows, **SIXTY_FOUR)))  # noqa: E731
        rates = {"one": [], "many": []}
        for _ in range(runs):
            for key, fn in (("one", one), ("many", many)):
                start = time.perf_counter()
                n = fn()
                rates[key].append(n / (time.perf_counter() - start))
        one_rate, many_rate = (statistics.median(rates[k]) for k in ("one", "many"))
        out[name] = {
            "tokens_per_s_1": round(one_rate, 1), f"tokens_per_s_{batch}": round(many_rate, 1),
            "x_one": round(many_rate / one_rate, 2),
        }  # fmt: skip
    return out


MEMORY_CHILD = """
import json, torch
torch.set_num_threads({threads})
import onnxruntime  # noqa: F401  (imports are part of the baseline)
from llm_compression.loader import load_model
def status(key):  # VmRSS, RssAnon (the process's own pages, no library code), VmHWM (its peak)
    text = open("/proc/self/status").read()  # (ru_maxrss can carry the parent's peak over exec)
    return int(text.split(key + ":")[1].split()[0]) * 1024
base, anon = status("VmRSS"), status("RssAnon")
m = load_model({path!r}, dtype={dtype!r}, backend={backend!r})
loaded, loaded_anon = status("VmRSS"), status("RssAnon")
m.generate_ids(m.tokenizer.encode("The capital of France is"), max_new_tokens=64)
print(json.dumps(dict(base=base, loaded=loaded, after=status("VmRSS"), peak=status("VmHWM"),
                      anon=anon, loaded_anon=loaded_anon)))
"""


def int8_file(family: str, paths: dict, work: Path) -> Path:
    """The int8 file ``convert(..., dtype="int8")`` writes (int8_sym_channel), made once."""
    from llm_compression.convert import convert

    path = work / f"{family}.int8.parquet"
    if not path.is_file():
        convert(paths["hf"], path, dtype="int8")
    return path


def memory(family: str, paths: dict, work: Path, threads: int) -> dict:
    """Per variant, in a fresh process: resident memory above the baseline over the file size."""
    import subprocess

    int8 = int8_file(family, paths, work)
    files = {"float32": (paths["ours"], "float32", "torch"), "int8-file": (int8, "int8", "torch"),
             "int8-ort": (int8, "int8", "onnxruntime"),
             "float32-graph": (paths["ours"], "float32", "onnxruntime")}  # fmt: skip
    if family == "smollm2":
        files["int4"] = (work / "smollm2.gguf.parquet", "int4", "torch")
        files["int4-ort"] = (work / "smollm2.gguf.parquet", "int4", "onnxruntime")
    out = {}
    for variant, (path, dtype, backend) in files.items():
        code = MEMORY_CHILD.format(threads=threads, path=str(path), dtype=dtype, backend=backend)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        size = path.stat().st_size
        out[variant] = {
            "file_mb": round(size / 2**20, 1),
            "loaded_above_base_x_file": round((got["loaded"] - got["base"]) / size, 2),
            "after_64_tokens_above_base_x_file": round((got["after"] - got["base"]) / size, 2),
            "peak_above_base_x_file": round((got["peak"] - got["base"]) / size, 2),
            # without the code pages of libraries loaded on the way (pyarrow, tokenizers)
            "loaded_anonymous_above_base_x_file": round(
                (got["loaded_anon"] - got["anon"]) / size, 2
            ),
        }
    return out


def reference_tokens(model, prompts: list[str], path: Path) -> list[list[int]]:
    """Float32's 64 greedy tokens per prompt, kept in ``path`` (JSON, keyed by prompt) so a
    later run compares more variants without decoding float32 again."""
    known = json.loads(path.read_text()) if path.is_file() else {}
    for p in [p for p in prompts if p not in known]:
        known[p] = model.generate_ids(model.tokenizer.encode(p), max_new_tokens=64)
        path.write_text(json.dumps(known))
    return [known[p] for p in prompts]


def agreement(models: dict, prompts: list[str], reference: Path) -> dict:
    ref = models["float32"]
    others = {name: m for name, m in models.items() if name != "float32"}
    same = dict.fromkeys(others, 0)
    first: dict[str, list[int]] = {name: [] for name in others}
    for p, a in zip(prompts, reference_tokens(ref, prompts, reference), strict=True):
        ids = ref.tokenizer.encode(p)
        for name, m in others.items():
            b = m.generate_ids(ids, max_new_tokens=64)
            if a == b:
                same[name] += 1
            else:
                pairs = zip(a, b, strict=False)
                first[name].append(next((i for i, (u, v) in enumerate(pairs) if u != v), len(b)))
    return {
        name: {"identical": f"{same[name]}/{len(prompts)}", "first_divergence": sorted(first[name])}
        for name in others
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="smollm2,olmo")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--agreement", type=int, default=20)
    ap.add_argument("--batch", type=int, default=0, help="also time N prompts together (0: no)")
    ap.add_argument("--memory", action="store_true", help="peak memory per variant, fresh process")
    ap.add_argument("--work", type=Path, default=Path("/tmp/llmc-bench"))
    ap.add_argument(
        "--per-matrix",
        action="store_true",
        help="also time int8 / int4 on one ORT session per matrix (A/B)",
    )
    ap.add_argument("--accuracy-levels", default="",
                    help="also run int8 / int4 at these MatMulNBits accuracy levels, e.g. 1")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    results = {}
    print(json.dumps({"machine": machine()}), flush=True)
    for family in args.families.split(","):
        paths = prepare(family, args.work)
        levels = [int(n) for n in args.accuracy_levels.split(",") if n]
        models = variants(family, paths, args.work, args.per_matrix, levels)
        models.update(llama_cpp(family, args.threads, models["float32"].tokenizer))
        hf = AutoModelForCausalLM.from_pretrained(paths["hf"]).eval()
        ids = models["float32"].tokenizer.encode(PROMPT)
        with torch.inference_mode():
            results[family] = {
                "load_before": os.getloadavg()[0],
                **speed(models, hf, ids, args.runs),
            }
        results[family]["load_after"] = os.getloadavg()[0]
        print(json.dumps({family: results[family]}), flush=True)
        if args.batch:
            with torch.inference_mode():
                found = batch_speed(models, models["float32"].tokenizer, args.batch, args.runs)
            print(json.dumps({family: {f"batch_{args.batch}": found}}), flush=True)
        if args.memory:
            print(json.dumps({family: {"memory": memory(family, paths, args.work, args.threads)}}),
                  flush=True)  # fmt: skip
        if family == "smollm2" and args.agreement:
            with torch.inference_mode():
                reference = args.work / f"{family}.float32-tokens.json"
                found = agreement(models, PROMPTS[: args.agreement], reference)
            print(json.dumps({family: {"agreement": found}}), flush=True)


if __name__ == "__main__":
    main()
