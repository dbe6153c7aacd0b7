"""load_model from a weight file (store -> loader -> meta build -> assign) and the generate CLI."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import tiny_bert, tiny_causal_lm, tiny_clip, tiny_tokenizer_files

from llm_compression.cli import main
from llm_compression.families import CLIP, CausalLM, SentenceEncoder, build_model
from llm_compression.loader import load_model, load_weights_into
from llm_compression.weightfile import write_model


def write(path, cfg, state, files, dtype="float32"):
    tensors = {k: v.numpy() for k, v in state.items()}
    return write_model(path, tensors, config=cfg, dtype=dtype, files=files)


@pytest.fixture(scope="module")
def lm_file(tmp_path_factory):
    files = tiny_tokenizer_files()
    from llm_compression.preprocess.text import Tokenizer

    vocab = Tokenizer.from_files(files).vocab_size
    _, cfg, state = tiny_causal_lm("llama", tie=True, vocab_size=vocab, seed=4)
    path = write(tmp_path_factory.mktemp("lm") / "lm.parquet", cfg, state, files)
    return path, cfg, state


def test_load_causal_lm_matches_in_memory_model(lm_file):
    path, cfg, state = lm_file
    model = load_model(path)
    assert isinstance(model, CausalLM) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    reference = load_weights_into(build_model(cfg), state)
    ids = model.tokenizer.encode("The quick brown fox")
    assert model.generate_ids(ids, max_new_tokens=10) == reference.generate_ids(
        ids, max_new_tokens=10
    )
    assert model.generate("The quick brown fox", max_new_tokens=10) == model.tokenizer.decode(
        reference.generate_ids(ids, max_new_tokens=10)
    )


def test_load_bfloat16(lm_file):
    model = load_model(lm_file[0], dtype=torch.bfloat16)  # core.compute: linear layers only
    assert model.layers[0].mlp.up.dense()[0].dtype == torch.bfloat16
    assert model.token_embed.weight.dtype == torch.float32
    assert isinstance(model.generate("fox", max_new_tokens=3), str)


def test_load_bert_and_clip(tmp_path):
    files = tiny_tokenizer_files()
    _, bcfg, bstate = tiny_bert()
    assert isinstance(
        load_model(write(tmp_path / "b.parquet", bcfg, bstate, files)), SentenceEncoder
    )
    _, ccfg, cstate = tiny_clip()
    clip = load_model(write(tmp_path / "c.parquet", ccfg, cstate, files, dtype="float16"))
    assert isinstance(clip, CLIP) and clip.logit_scale.dtype == torch.float32


def test_generate_cli(lm_file, capsys):
    path, cfg, state = lm_file
    model = load_model(path)
    expected = model.generate("The quick brown fox", max_new_tokens=8)
    assert (
        main(["generate", str(path), "--prompt", "The quick brown fox", "--max-new-tokens", "8"])
        == 0
    )
    assert capsys.readouterr().out == expected + "\n"
    argv = ["generate", str(path), "--prompt", "The quick brown fox", "--max-new-tokens", "8",
            "--stream", "--temperature", "0.9", "--top-k", "20", "--seed", "1"]  # fmt: skip
    assert main(argv) == 0
    sampled = model.generate(
        "The quick brown fox", max_new_tokens=8, temperature=0.9, top_k=20, seed=1
    )
    assert capsys.readouterr().out == sampled + "\n"


def test_generate_cli_backend_onnxruntime(tmp_path, capsys):
    """``--backend onnxruntime``: float32 on the decoder graph, the torch model's greedy text; a
    model the graph cannot run (head_dim 8) is a typed error, exit 2."""
    pytest.importorskip("onnxruntime")
    files = tiny_tokenizer_files()
    from llm_compression.preprocess.text import Tokenizer

    vocab = Tokenizer.from_files(files).vocab_size
    _, cfg, state = tiny_causal_lm("llama", tie=True, vocab_size=vocab, seed=4, heads=2)
    path = write(tmp_path / "lm.parquet", cfg, state, files)
    expected = load_model(path).generate("The quick brown fox", max_new_tokens=8)
    argv = ["generate", str(path), "--prompt", "The quick brown fox", "--max-new-tokens", "8"]
    assert main([*argv, "--backend", "onnxruntime"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    _, cfg, state = tiny_causal_lm("llama", tie=True, vocab_size=vocab, seed=4)  # head_dim 8
    narrow = write(tmp_path / "narrow.parquet", cfg, state, files)
    assert main(["generate", str(narrow), "--prompt", "hi", "--backend", "onnxruntime"]) == 2
    assert "head_dim" in capsys.readouterr().err


def test_generate_cli_errors(tmp_path, lm_file, capsys):
    _, bcfg, bstate = tiny_bert()
    bert = write(tmp_path / "b.parquet", bcfg, bstate, tiny_tokenizer_files())
    assert main(["generate", str(bert), "--prompt", "hi"]) == 2
    assert "causal LM" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "missing.parquet"), "--prompt", "hi"]) == 2
    assert main(["generate", str(lm_file[0]), "--prompt", "hi", "--top-p", "2"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_generate_cli_prompt_file_stdin_and_verbose(lm_file, capsys, tmp_path, monkeypatch):
    import io

    path, _, _ = lm_file
    expected = load_model(path).generate("The quick brown fox", max_new_tokens=8)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The quick brown fox")
    argv = ["generate", str(path), "--prompt-file", str(prompt), "--max-new-tokens", "8"]
    assert main([*argv, "--verbose"]) == 0
    out = capsys.readouterr()
    assert out.out == expected + "\n"
    assert "decode:" in out.err and "tokens/s" in out.err and "peak memory" in out.err
    monkeypatch.setattr("sys.stdin", io.StringIO("The quick brown fox"))
    assert main(["generate", str(path), "-", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("The quick brown fox"))  # "-" after the options
    assert main(["generate", str(path), "--max-new-tokens", "8", "-"]) == 0
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "one of the arguments --prompt --prompt-file --prompts-file - is required"),
        (["--prompt", "a", "-"], "give the prompt one way"),
        (["--prompt", "a", "--prompt-file", "p.txt"], "not allowed with"),
        (["--prompt", "a", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_generate_cli_takes_one_prompt_source(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "m.parquet", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_generate_cli_several_prompts(lm_file, capsys, tmp_path):
    import json

    path, _, _ = lm_file
    prompts = ["The quick brown fox", "Hello", "A"]
    expected = [load_model(path).generate(p, max_new_tokens=8) for p in prompts]
    argv = ["generate", str(path), "--max-new-tokens", "8", "--batch-size", "2"]
    assert main([*argv, *(a for p in prompts for a in ("--prompt", p))]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [{"prompt": p, "text": t} for p, t in zip(prompts, expected, strict=True)]
    listed = tmp_path / "prompts.txt"
    listed.write_text("\n".join(prompts) + "\n\n")
    assert main([*argv, "--prompts-file", str(listed), "--verbose"]) == 0
    out = capsys.readouterr()
    assert [json.loads(line)["text"] for line in out.out.splitlines()] == expected
    assert "3 prompts" in out.err and "tokens/s" in out.err
    assert main([*argv, "--prompt", "a", "--prompt", "b", "--stream"]) == 2
    assert "--stream" in capsys.readouterr().err
