"""The GRPO engine: rollout (G completions per prompt), rewards, group advantages, policy loss, optimizer step.

It knows nothing of files, processes or UI: the worker drives it, the store keeps what it yields.

    from workbench.grpo import GRPOEngine
    engine = GRPOEngine.from_spec(spec, task)
    result = engine.step(rows)        # a StepResult: every episode and TRL-named metrics

Modules: `types` (Episode, StepResult, errors, prompt_batches), `sampler` (the fast rollout decoder), `forward`
(log-probs at completion positions, prompt shared by its group), `loss` (advantages and TRL 1.16's policy losses),
`engine` (GRPOEngine: one step, checkpoints).
"""

from .types import Episode, NonFiniteError, RewardFunctionError, StepResult, prompt_batches

__all__ = ["Episode", "GRPOEngine", "NonFiniteError", "RewardFunctionError", "StepResult", "prompt_batches"]


def __getattr__(name: str):
    if name == "GRPOEngine":  # imports torch and transformers: only when an engine is wanted
        from .engine import GRPOEngine

        return GRPOEngine
    raise AttributeError(name)
