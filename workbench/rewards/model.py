"""A learned reward: the score of any sequence-classification model (a hub id or a local folder), batched.

The model is loaded once per process and kept (`load_reward_model` is cached), so a run pays the load once, not per step.
A one-output model (a reward model proper) gives its raw logit; a classifier with several classes gives the
probability of one class (`label`, e.g. POSITIVE for a sentiment model). When the tokenizer has a chat template the
prompt and completion are scored as a conversation, as reward models are trained; otherwise as a text pair.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..limits import on_space, reads_server_file
from .base import Param, RewardError, RewardInfo, binder, positive


@functools.lru_cache(maxsize=2)
def load_reward_model(name: str, device: str):
    """(model, tokenizer) of a sequence-classification reward model, loaded once per process and device."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if on_space() and reads_server_file(name):  # a visitor's setting must not load the server's files
        raise RewardError(
            f"reward_model: {name!r} is a path on the server; on a Space give a hub id (org/name)"
        )
    src = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
    try:
        tok = AutoTokenizer.from_pretrained(src)
        model = AutoModelForSequenceClassification.from_pretrained(src, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise RewardError(
            f"reward_model: could not load {name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). Give a "
            "folder saved with save_pretrained or a hub id of a sequence-classification model; if it is a hub id, "
            "the hub may be unreachable from here"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if model.config.pad_token_id is None:
        # Llama-style classifiers pool the last non-pad token; without a pad id they refuse batches above 1.
        model.config.pad_token_id = tok.pad_token_id
    tok.padding_side = "right"
    tok.truncation_side = "left"  # keep the end of the completion, where the answer is
    return model.to(device).eval(), tok


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _class_index(model, label: str) -> int:
    n = model.config.num_labels
    if label == "":
        return n - 1
    names = {str(v).lower(): int(k) for k, v in (model.config.id2label or {}).items()}
    if label.lower() in names:
        return names[label.lower()]
    if label.lstrip("-").isdigit() and -n <= int(label) < n:
        return int(label) % n
    raise RewardError(
        f"reward_model: label {label!r} is not a class of this model; classes are "
        f"{', '.join(f'{i}={v}' for i, v in sorted((model.config.id2label or {}).items()))}"
    )


def _inputs(tok, prompt: Any, text: str, with_prompt: bool):
    """One scored string (chat template) or a (prompt, completion) text pair."""
    if not with_prompt or not prompt:
        return text, None
    if getattr(tok, "chat_template", None):
        msgs = (
            list(prompt) if isinstance(prompt, (list, tuple)) else [{"role": "user", "content": str(prompt)}]
        )
        return tok.apply_chat_template([*msgs, {"role": "assistant", "content": text}], tokenize=False), None
    if isinstance(prompt, (list, tuple)):
        prompt = "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return str(prompt), text


def _score_reward_model(texts, prompts, cols, *, model, batch_size, max_length, label, with_prompt, device):
    import torch

    net, tok = load_reward_model(model, _device(device))
    idx = _class_index(net, str(label)) if net.config.num_labels > 1 else 0
    out: list[float] = []
    for i in range(0, len(texts), batch_size):
        pairs = [
            _inputs(tok, p, t, with_prompt)
            for p, t in zip(prompts[i : i + batch_size], texts[i : i + batch_size], strict=True)
        ]
        firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
        kw = dict(padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc = tok(firsts, seconds, **kw) if all(s is not None for s in seconds) else tok(firsts, **kw)
        with torch.inference_mode():
            logits = net(**enc.to(net.device)).logits.float()  # (B, num_labels)
        vals = logits[:, 0] if net.config.num_labels == 1 else logits.softmax(-1)[:, idx]
        out.extend(vals.tolist())
    return out


def _check(model, batch_size, max_length, label, with_prompt, device):
    if not str(model).strip():
        raise RewardError("reward_model: model is empty; give a sequence-classification model id or folder")
    positive(batch_size=batch_size, max_length=max_length)


REWARDS = [
    RewardInfo(
        "reward_model",
        "Score from a sequence-classification model: the logit of a reward model, or one class's probability.",
        {
            "model": Param("", "Hub id or folder of an AutoModelForSequenceClassification model."),
            "batch_size": Param(8, "Completions scored per forward pass."),
            "max_length": Param(512, "Longest input in tokens; longer ones lose their beginning."),
            "label": Param(
                "",
                "For classifiers: the class (name or index) whose probability is the reward; empty = last.",
            ),
            "with_prompt": Param(True, "Score the prompt with the completion (off = the completion alone)."),
            "device": Param("cpu", "Where the reward model runs.", ("cpu", "cuda", "auto")),
        },
        (),
        binder("reward_model", _score_reward_model, check=_check),
    ),
]
