"""GRPO Workbench: try GRPO on a small language model — train, watch it learn, compare base and tuned.

Floors (each imports only from floors below): config/models/rewards/tasks → grpo (the engine) →
store/runner/evaluate/trl_engine/cli → ui → app.py.
"""

__version__ = "0.1.0"
