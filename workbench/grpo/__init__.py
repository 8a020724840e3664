"""The GRPO engine: rollout (G completions per prompt), rewards, group advantages, policy loss, optimizer step.

It knows nothing of files, processes or UI: the worker drives it, the store keeps what it yields.

    from workbench.grpo import GRPOEngine
    engine = GRPOEngine.from_spec(spec, task)
    result = engine.step(rows)        # a StepResult: every episode and TRL-named metrics

Which rows a step trains on is the task's business: `workbench.tasks.prompt_batches`.

Modules: `types` (Episode, StepResult, errors), `advantages` (the reward total and group advantages, torch-free),
`loss` (TRL 1.16's policy losses), `llama` (the Llama-style plumbing the next four share), `merged` (the sampler's
merged, fused copy of the weights), `sampler` (the rollout samplers behind one protocol), `fused` (frozen
projections fused for training), `forward` (log-probs at completion positions, prompt shared by its group), `engine`
(GRPOEngine: one step, checkpoints), `selfcheck` (the hand-written paths checked once against the HF forward on a
device the tests do not cover, e.g. CUDA; they fall back with a log line where the check fails).
"""

from .types import Episode, NonFiniteError, RewardFunctionError, StepResult

__all__ = ["Episode", "GRPOEngine", "NonFiniteError", "RewardFunctionError", "StepResult"]


def __getattr__(name: str):
    if name == "GRPOEngine":  # imports torch and transformers: only when an engine is wanted
        from .engine import GRPOEngine

        return GRPOEngine
    raise AttributeError(name)
