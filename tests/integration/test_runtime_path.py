"""Every family runs in one fresh process without importing ``transformers``.

Conversion and validation may import transformers; the runtime path (loading a weight file,
embedding text, images and audio, transcribing, generating) never does. The models come from
the real packaged weights (MiniLM, Whisper tiny.en, SmolLM2) and small random CLIP and OLMo
checkpoints, all converted before the child process starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import llm_compression as lc

    paths = json.loads(sys.argv[1])
    provider = lc.MultimodalEmbeddingProvider(
        text_model=paths["bert"], clip_model=paths["clip"], audio_model=paths["whisper"]
    )
    tone = np.sin(np.arange(16000, dtype=np.float32) / 16000 * 2 * np.pi * 440) * 0.1
    image = np.full((40, 30, 3), 128, np.uint8)
    out = {
        "text": provider.encode_batch(["a cat on a mat"]).shape,
        "clip_text": provider.clip_engine.encode_text(["a cat"]).shape,
        "image": provider.encode_image([image]).shape,
        "audio": provider.encode_audio([tone], sample_rate=16000).shape,
        "transcript": type(lc.load_model(paths["whisper"]).transcribe(tone)).__name__,
    }
    for name in ("llama", "olmo"):
        text = lc.load_model(paths[name]).generate("Hello", max_new_tokens=3)
        out[name] = type(text).__name__
    out["transformers"] = sorted(m for m in sys.modules if m.split(".")[0] == "transformers")
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def random_models(tmp_path_factory):
    from llm_compression.convert import convert
    from llm_compression.convert.random_init import save_random_clip, save_random_olmo

    root = tmp_path_factory.mktemp("runtime")
    clip = save_random_clip(
        root / "clip",
        vision_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=128, image_size=64, patch_size=32),
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64),
        projection_dim=16,
    )  # fmt: skip
    olmo = save_random_olmo(
        root / "olmo", version=2, n_layers=1, hidden_size=128, intermediate_size=256,
        num_attention_heads=2, num_key_value_heads=2, vocab_size=100352, pad_token_id=1,
        eos_token_id=2, bos_token_id=None,
    )  # fmt: skip
    return {
        "clip": convert(clip, root / "clip.parquet", dtype="float32"),
        "olmo": convert(olmo, root / "olmo.parquet", dtype="float32"),
    }


def test_every_family_runs_without_transformers(
    random_models, real_minilm_parquet, real_whisper_tiny_en_parquet, real_smollm2_parquet
):
    paths = {
        "bert": real_minilm_parquet,
        "whisper": real_whisper_tiny_en_parquet,
        "llama": real_smollm2_parquet,
        **random_models,
    }
    arg = json.dumps({k: str(v) for k, v in paths.items()})
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, arg], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["transformers"] == []
    assert out["text"] == [1, 384] and out["audio"] == [1, 384]
    assert out["clip_text"] == [1, 16] and out["image"] == [1, 16]
    assert out["transcript"] == out["llama"] == out["olmo"] == "str"
