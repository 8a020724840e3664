"""How big a hub model is, read from the hub's metadata before anything is downloaded; the model-size limits.

On a Space a visitor may name any hub id, and `from_pretrained` would start downloading a 70B model at once. So a
run's model and its reward models are sized first: the parameter count the hub reports for safetensors weights, or
else an estimate from the weight files' sizes (2 bytes per parameter: never smaller than the truth for 16- or
32-bit weights). A model the hub cannot size is refused where a cap is set.

    from workbench.hub_meta import check_model_sizes
    check_model_sizes(spec, limits)      # ConfigError naming the limit and its variable; no network without a cap
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from .config import BUNDLED, TINY_MODEL
from .errors import ConfigError
from .limits import BY_FIELD

if TYPE_CHECKING:
    from .config import RunSpec
    from .limits import Limits

# Weight files transformers loads (safetensors first); other formats in a repo are other copies of the same weights.
WEIGHT_SUFFIXES = (".safetensors", ".bin")
KNOWN = {TINY_MODEL, *BUNDLED, *(b["hub_id"] for b in BUNDLED.values())}  # sized already, no need to ask


@functools.lru_cache(maxsize=256)
def param_count(repo_id: str) -> int:
    """Parameters of a hub model from its metadata (no weights downloaded); ConfigError when the hub cannot say."""
    from huggingface_hub import model_info

    try:
        info = model_info(repo_id, files_metadata=True, timeout=15)
    except Exception as e:  # offline, not found, gated, rate-limited: all mean "size unknown"
        raise ConfigError(
            f"could not read the size of {repo_id!r} from the hub ({type(e).__name__}): check the id; this server "
            "loads only models whose size it can check first"
        ) from None
    if info.safetensors is not None and info.safetensors.total:
        return int(info.safetensors.total)
    for suffix in WEIGHT_SUFFIXES:
        sizes = [s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(suffix)]
        if sum(sizes):
            return sum(sizes) // 2
    raise ConfigError(
        f"the hub lists no safetensors or PyTorch weights for {repo_id!r}: this server loads only models whose size "
        "it can check first"
    )


def _check(repo_id: str, cap_m: float | None, field: str, what: str) -> None:
    if cap_m is None or repo_id in KNOWN:
        return
    n = param_count(repo_id)
    if n > cap_m * 1e6:
        raise ConfigError(
            f"{what} {repo_id!r} has {n / 1e6:,.0f}M parameters, above this server's limit of {cap_m:g}M: pick a "
            f"smaller one (the server's owner can raise the limit with {BY_FIELD[field].env})"
        )


def check_model_sizes(spec: RunSpec, limits: Limits) -> None:
    """Refuse a run whose model or reward model is above this deployment's size caps (read from the hub)."""
    _check(spec.model.strip(), limits.max_model_params_m, "max_model_params_m", "model")
    for r in spec.rewards:
        if r.name == "reward_model" and str(r.params.get("model") or "").strip():
            _check(str(r.params["model"]).strip(), limits.max_reward_model_params_m, "max_reward_model_params_m",
                   "reward model")  # fmt: skip
