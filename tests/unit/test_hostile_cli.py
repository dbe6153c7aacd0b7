"""User errors on the command line: one line on stderr, exit 2, never a traceback (10.5)."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
from hostile_helpers import BERT, model_file
from provider_helpers import tiny_bert_folder

from llm_compression.cli import main


class _Evil:
    def __reduce__(self):  # would run a command if the checkpoint were ever unpickled unsafely
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    return tiny_bert_folder(tmp_path_factory.mktemp("hf") / "bert")


@pytest.fixture(scope="module")
def bert_parquet(tmp_path_factory):
    return model_file(tmp_path_factory.mktemp("pq") / "bert.parquet", BERT)


@pytest.fixture
def not_a_folder(tmp_path):
    """A regular file, used where a folder is expected (like /proc for writing: refused)."""
    path = tmp_path / "file.txt"
    path.write_text("hi")
    return path


def _user_error(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_convert_to_an_unwritable_place(hf_bert, not_a_folder, capsys):
    err = _user_error(["convert", hf_bert, not_a_folder / "out.parquet", "--no-progress"], capsys)
    assert err.startswith("llm-compression convert: error: ") and "file.txt" in err


def test_embed_output_to_an_unwritable_place(bert_parquet, not_a_folder, capsys):
    argv = [
        "embed",
        "--text-model",
        bert_parquet,
        "--text",
        "hi",
        "--output",
        not_a_folder / "v.npz",
    ]
    assert "Not a directory" in _user_error(argv, capsys)


def test_tables_verify_on_a_file(not_a_folder, capsys):
    assert "file.txt" in _user_error(["tables", "verify", not_a_folder], capsys)


def test_demo_workdir_that_cannot_be_made(not_a_folder, capsys):
    assert "file.txt" in _user_error(["demo", "--workdir", not_a_folder / "x"], capsys)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_the_issues_proc_paths(hf_bert, bert_parquet, capsys):
    _user_error(["convert", hf_bert, "/proc/out.parquet", "--no-progress"], capsys)
    _user_error(
        ["embed", "--text-model", bert_parquet, "--text", "x", "--output", "/proc/v.npz"], capsys
    )
    _user_error(["demo", "--workdir", "/proc/x"], capsys)


def test_validate_against_a_refused_pytorch_bin(hf_bert, tmp_path, capsys):
    pytest.importorskip("transformers")
    parquet = tmp_path / "b.parquet"
    assert main(["convert", str(hf_bert), str(parquet), "--no-progress"]) == 0
    reference = tmp_path / "ref"
    shutil.copytree(hf_bert, reference)
    for weights in reference.glob("*.safetensors"):
        weights.unlink()
    (reference / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil()))
    capsys.readouterr()
    err = _user_error(["validate", parquet, "--reference", reference], capsys)
    assert "cannot load the reference model" in err and "pwned" not in capsys.readouterr().out


def test_bugs_still_show_their_traceback(monkeypatch):
    # Only user errors are turned into one line; anything else is a bug and must stay visible.
    import llm_compression.commands.inspect as inspect_command

    def boom(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(inspect_command, "run", boom)
    with pytest.raises(ZeroDivisionError):
        main(["inspect", "x.parquet"])


def test_arguments_that_are_not_utf8_are_echoed_escaped(tmp_path, capsys):
    # A file name with a stray byte reaches Python as a lone surrogate (surrogateescape).
    odd = str(tmp_path / "caf\udce9.parquet")
    with pytest.raises(SystemExit) as info:
        main(["inspect", odd, "--no-such-flag"])  # argparse echoes the arguments it refuses
    assert info.value.code == 2
    assert main(["inspect", odd]) == 2
    err = capsys.readouterr().err
    assert "\\udce9" in err and "Traceback" not in err
