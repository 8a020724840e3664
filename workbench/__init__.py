"""GRPO Workbench: try GRPO on a small language model — train, watch it learn, compare base and tuned.

Floors (each imports only from floors below): config/osutil/models/rewards/tasks → grpo (the engine) →
store/runner/worker/evaluate/trl_engine/trl_export/cli (cli_args builds its parser) → ui → app.py.
"""

__version__ = "0.1.0"
