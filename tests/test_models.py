"""Model loading: the bundled SmolLM2 converts once, loads from cache, answers; a broken cache is rebuilt."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from workbench import models


def _answer(model, tok, question: str) -> str:
    enc = tok.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_bundled_model_answers_a_chat_question(bundled):
    model, tok = bundled
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert "{%" in tok.chat_template  # the chat template came along with the conversion
    answer = _answer(model, tok, "What is the capital of France?")
    assert "Paris" in answer


@pytest.mark.slow
def test_conversion_is_cached_and_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    # A private models folder: this test converts from the GGUF, breaks the result, and checks the rebuild.
    monkeypatch.setenv("WORKBENCH_MODELS_DIR", str(tmp_path / "models"))
    name = models.DEFAULT_MODEL
    assert not models.is_prepared(name)
    folder = models.prepare_bundled(name)
    assert models.is_prepared(name)
    weights = folder / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert (
        models.prepare_bundled(name) == folder and weights.stat().st_mtime_ns == mtime
    )  # cached: not redone

    # A conversion killed half way leaves a truncated file: detected, and rebuilt on the next call.
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    assert not models.is_prepared(name)
    models.prepare_bundled(name)
    assert models.is_prepared(name)
    model, tok = models.load_model(name, dtype="float32")
    assert sum(p.numel() for p in model.parameters()) > 100_000_000

    # A folder without the ready marker (the rename never happened) is not trusted either.
    (folder / "workbench-ready.json").unlink()
    assert not models.is_prepared(name)
    shutil.rmtree(folder)


def test_leftover_temp_folders_are_never_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MODELS_DIR", str(tmp_path))
    (tmp_path / f".{models.DEFAULT_MODEL}-abc").mkdir()  # what a killed conversion leaves behind
    assert not models.is_prepared(models.DEFAULT_MODEL)


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(models.ModelError) as e:
        models.resolve("no-such-model")
    assert models.DEFAULT_MODEL in str(e.value) and "hub id" in str(e.value)


def test_local_folder_without_config_is_refused(tmp_path: Path):
    with pytest.raises(models.ModelError, match="config.json"):
        models.resolve(str(tmp_path))


def test_tiny_model_builds_without_download(tiny):
    model, tok = tiny
    assert model.config.num_hidden_layers == 2
    ids = tok("hello", return_tensors="pt")
    logits = model(**ids).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def test_dtype_choice():
    assert models.pick_dtype("float32") == torch.float32
    assert models.pick_dtype("bfloat16") == torch.bfloat16
    expected = torch.bfloat16 if models.cpu_has_fast_bf16() else torch.float32
    assert models.pick_dtype("auto", "cpu") == expected
