"""The run spec as TRL settings, and the TRL export: the folder `workbench export RUN --trl DIR` writes.

    workbench export RUN --trl DIR
    cd DIR && accelerate launch --config_file accelerate_config.yaml train.py

`grpo_config_kwargs` (the spec → GRPOConfig mapping) and `trl_rows` (task rows as TRL's conversational prompts) are
shared with `trl_engine`, which trains on TRL in-process; this module depends on the spec, never on the TRL engine.
`export_trl` fills the `$placeholders` (string.Template) with literal values from the run spec, so the exported
train.py reads like a hand-written TRL script: one GRPOConfig dict, the rewards by registry name, a LoRA config.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template
from typing import Any

from .config import BUNDLED, TINY_MODEL, RunSpec
from .rewards import build_rewards
from .tasks import chat_messages, column_names

# --- the spec as TRL settings (shared with trl_engine) ----------------------------------------------------------


def grpo_config_kwargs(spec: RunSpec, reward_weights: list[float]) -> dict[str, Any]:
    """GRPOConfig keyword arguments for every GRPO field of `spec`, one process (precision and I/O left out)."""
    mu = spec.num_iterations
    return {
        "num_generations": spec.num_generations,
        "per_device_train_batch_size": spec.prompts_per_step * spec.num_generations,  # completions per step
        "max_completion_length": spec.max_completion_length,
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "learning_rate": spec.learning_rate,
        "lr_scheduler_type": spec.scheduler_name,
        "warmup_steps": spec.warmup_steps * mu,  # TRL counts optimizer steps: μ per workbench step
        "max_steps": spec.max_steps * mu,
        "max_grad_norm": spec.max_grad_norm,
        "weight_decay": spec.weight_decay,
        "loss_type": spec.loss_type,
        "beta": spec.beta,
        "epsilon": spec.epsilon,
        "epsilon_high": spec.epsilon_high,
        "num_iterations": mu,
        "scale_rewards": spec.scale_rewards,
        "mask_truncated_completions": spec.mask_truncated_completions,
        "reward_weights": [float(w) for w in reward_weights],
        "seed": spec.seed,
    }


def trl_rows(rows: list[dict], system_prompt: str) -> list[dict]:
    """Task rows as TRL wants them: a conversational "prompt" (system prompt included) plus reference columns.

    Every row carries every column (None where it has no value): `datasets.Dataset.from_list` takes its columns from
    the first row, so a first row without an "answer" would silently drop the column for all rows.
    """
    columns = column_names(rows)
    return [{"prompt": chat_messages(r, system_prompt), **{k: r.get(k) for k in columns}} for r in rows]


# --- the export -------------------------------------------------------------------------------------------------

TRAIN_PY = Template('''\
"""GRPO with TRL + accelerate: run "$title", exported by GRPO Workbench.

Task: $task_line
Model: $model_doc (change with --model)

Run on every GPU of this machine (see README.md beside this file):

    accelerate launch --config_file accelerate_config.yaml train.py

One process (one GPU, or the CPU as a smoke test):

    python train.py --max_steps 2

Every GRPOConfig field can be overridden on the command line, e.g. `--learning_rate 1e-5 --num_generations 8
--per_device_train_batch_size 32 --use_vllm true`. The reward functions come from the `workbench` package: the same
code that scored the run in the app. The workbench's checks (degenerate, repetition, correct, words) are logged as
checks/<name> on training batches and eval_checks/<name> on eval.jsonl every eval_steps steps.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import HfArgumentParser
from trl import GRPOConfig, GRPOTrainer

from workbench.config import RewardSpec
from workbench.lab.trl_checks import with_checks
from workbench.rewards import build_rewards

HERE = Path(__file__).resolve().parent
ON_GPU = torch.cuda.is_available()

# The run spec as TRL settings. A step trains on per_device_train_batch_size completions per process, i.e.
# $prompts_per_step prompts x $num_generations completions: on N processes a step sees N times as many prompts.
CONFIG = dict(
    output_dir=str(HERE / "output"),
    # --- sampling (the rollout)
    num_generations=$num_generations,
    per_device_train_batch_size=$per_device_train_batch_size,  # = prompts per step x num_generations
    max_completion_length=$max_completion_length,
    temperature=$temperature,
    top_p=$top_p,
    # --- optimisation
    learning_rate=$learning_rate,
    lr_scheduler_type=$lr_scheduler_type,
    warmup_steps=$warmup_steps,  # optimizer steps: workbench steps x num_iterations
    max_steps=$max_steps,  # optimizer steps: workbench steps x num_iterations
    max_grad_norm=$max_grad_norm,
    weight_decay=$weight_decay,
    gradient_checkpointing=False,  # True saves GPU memory on models above ~1B parameters, at ~30% more time
    # --- the GRPO objective
    loss_type=$loss_type,
    beta=$beta,
    epsilon=$epsilon,
    epsilon_high=$epsilon_high,
    num_iterations=$num_iterations,
    scale_rewards=$scale_rewards,
    mask_truncated_completions=$mask_truncated_completions,
    reward_weights=$reward_weights,  # one per entry of REWARDS
    # --- precision and device
$precision
    use_cpu=not ON_GPU,
    # --- run
    seed=$seed,
    logging_steps=1,
    report_to="none",  # "wandb" or "trackio" to watch the curves
    save_strategy="no",  # "steps" with save_steps=N to keep checkpoints
    # --- held-out checks: eval.jsonl answered and scored, the rewards and the checks logged as eval_...
    eval_strategy=$eval_strategy,
    eval_steps=$eval_steps,
    per_device_eval_batch_size=$per_device_train_batch_size,
    # --- generation with vLLM (`pip install vllm`; GPUs only): far faster rollouts at large G.
    # "colocate" shares the training GPUs; "server" talks to `trl vllm-serve --model MODEL` on GPUs of its own.
    # use_vllm=True,
    # vllm_mode="colocate",
    # vllm_gpu_memory_utilization=0.3,
)

# The reward functions: registry name, weight and parameters (`workbench rewards` lists them all).
REWARDS = [
$rewards
]

# LoRA adapter settings; None = full fine-tuning.
LORA = $lora


@dataclass
class ScriptArguments:
    model: str = field(
        default=$model_repr, metadata={"help": "Hub id or local folder of the model to train."}
    )
    train_file: str = field(
        default=str(HERE / "train.jsonl"), metadata={"help": "Training prompts: jsonl with a 'prompt' column."}
    )
    eval_file: str = field(
        default=str(HERE / "eval.jsonl"), metadata={"help": "Held-out prompts, scored every eval_steps steps."}
    )


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, GRPOConfig))
    parser.set_defaults(**CONFIG)
    script, config = parser.parse_args_into_dataclasses()
    rewards = build_rewards(REWARDS)  # (metric name, fn, weight); each fn logs as rewards/<name>/mean
    dataset = load_dataset("json", data_files=script.train_file, split="train")
    evals = load_dataset("json", data_files=script.eval_file, split="train") if config.eval_strategy != "no" else None
    trainer = GRPOTrainer(
        model=script.model,
        reward_funcs=with_checks([fn for _, fn, _ in rewards], REWARDS),  # the first also logs checks/<name>
        args=config,
        train_dataset=dataset,
        eval_dataset=evals,
        peft_config=LoraConfig(**LORA) if LORA else None,
    )
    trainer.train()
    # The adapter (or the full model) with its tokenizer; `workbench compare` and `peft` load it from here.
    trainer.save_model(str(Path(config.output_dir) / "final"))


if __name__ == "__main__":
    main()
''')

ACCELERATE_YAML = Template("""\
# accelerate config for train.py: data parallel on every GPU of one machine.
#   accelerate launch --config_file accelerate_config.yaml train.py
# num_processes = GPUs to use; override without editing: accelerate launch --num_processes 4 ...
#
# Larger models, when one GPU cannot hold the model + optimizer state (TRL ships ready configs in
# trl/accelerate_configs/):
# - DeepSpeed ZeRO-2 (`pip install deepspeed`): set distributed_type: DEEPSPEED and add
#     deepspeed_config: {zero_stage: 2, offload_optimizer_device: none, offload_param_device: none}
#   ZeRO-3 also shards the weights: zero_stage: 3, zero3_init_flag: true, zero3_save_16bit_model: true
#   (with vLLM, keep GRPOConfig ds3_gather_for_generation=True).
# - FSDP2: set distributed_type: FSDP and add
#     fsdp_config: {fsdp_version: 2, fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP, fsdp_reshard_after_forward: true,
#                   fsdp_state_dict_type: FULL_STATE_DICT, fsdp_cpu_ram_efficient_loading: true}
compute_environment: LOCAL_MACHINE
debug: false
distributed_type: MULTI_GPU
downcast_bf16: 'no'
gpu_ids: all
machine_rank: 0
main_training_function: main
mixed_precision: '$mixed_precision'
num_machines: 1
num_processes: 8
rdzv_backend: static
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: false
""")

README_MD = Template("""\
# GRPO on TRL: $title

Exported by GRPO Workbench from a run spec: the same task data, reward functions and GRPO settings, on TRL's
`GRPOTrainer`, launched with `accelerate` on one or many GPUs.

| file | what it is |
|---|---|
| `train.py` | the training script: one `GRPOConfig` built from the spec, the rewards, LoRA |
| `train.jsonl`, `eval.jsonl` | $n_train training prompts and $n_eval held-out prompts (chat messages + reference columns) |
| `accelerate_config.yaml` | data parallel on all GPUs of one machine; notes for DeepSpeed and FSDP inside |
| `run_spec.json` | the workbench run spec this was made from (`workbench train --config run_spec.json`) |

## Run it

```bash
pip install "trl==$trl_version" peft accelerate datasets   # plus the workbench package, for the rewards
accelerate launch --config_file accelerate_config.yaml train.py
```

- Another model: `--model Qwen/Qwen2.5-0.5B-Instruct` (a hub id or a local folder). Default: `$model`.
- Fewer GPUs: `accelerate launch --config_file accelerate_config.yaml --num_processes 2 train.py`.
- Smoke test on one process (a GPU, or the CPU): `python train.py --max_steps 2`.
- Any `GRPOConfig` field: `--learning_rate 1e-5`, `--num_generations 16 --per_device_train_batch_size 64`, ...
- Faster generation with vLLM (`pip install vllm`): `--use_vllm true --vllm_mode colocate`, or run
  `trl vllm-serve --model MODEL` on GPUs of its own and pass `--use_vllm true --vllm_mode server` (launch training on
  the other GPUs with `--num_processes`).

The adapter (or full model) lands in `output/final/`.

## What changes on N GPUs

A step trains on `per_device_train_batch_size` = $per_device_train_batch_size completions per process
($prompts_per_step prompts x $num_generations completions), so on N GPUs a step sees N x $prompts_per_step prompts: the same learning
rate on N times the batch, which is usually what you want. To keep the workbench's batch exactly, divide
`--per_device_train_batch_size` by N (a global batch of whole groups of num_generations is all TRL requires).

The curves (`reward`, `rewards/<name>/mean`, `completions/mean_length`, `kl`, `entropy`, `clip_ratio/*`) have the
same names and meanings as in the workbench. `max_steps` counts optimizer steps: with num_iterations = mu, TRL's
step count is the workbench's x mu. `step_time` here is TRL's own measure (generation, forward and backward, without
the optimizer update), so it is not the workbench's wall-clock step time.
""")


def _hub_model(name: str) -> str:
    """What the exported script loads: the bundled model's hub id (also for the tiny test model), else as given."""
    if name in BUNDLED:
        return BUNDLED[name]["hub_id"]
    if name == TINY_MODEL:
        return next(iter(BUNDLED.values()))["hub_id"]
    return name


def _doc_text(text: str) -> str:
    """Text safe inside the script's docstring: a visitor's task or model name must not close the string (a quote)
    or start an escape (a backslash) and so turn into code."""
    # a NUL byte or another control character makes the file unreadable as Python
    text = "".join(c if c.isprintable() or c == "\n" else " " for c in str(text))
    return text.replace("\\", "/").replace('"', "'")


def _lit(v: Any) -> str:
    """A Python literal as ruff would format it (double quotes), for the exported script."""
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_lit(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_lit(k)}: {_lit(x)}" for k, x in v.items()) + "}"
    return repr(v)


_PRECISION = {
    "auto": "    bf16=ON_GPU and torch.cuda.is_bf16_supported(),  # bf16 mixed precision on GPUs that have it\n"
    "    fp16=ON_GPU and not torch.cuda.is_bf16_supported(),",
    "bfloat16": "    bf16=True,",
    "float16": "    fp16=ON_GPU,\n    bf16=False,",
    "float32": "    bf16=False,",
}
_MIXED = {"auto": "bf16", "bfloat16": "bf16", "float16": "fp16", "float32": "no"}


def export_trl(spec: RunSpec, task: Any, out_dir: Path) -> Path:
    """Write a self-contained TRL + accelerate training folder for `spec` on `task`; return the folder.

    train.py (GRPOConfig with the spec's values, rewards by registry name), train.jsonl / eval.jsonl,
    accelerate_config.yaml, README.md with the launch command, run_spec.json. Rewards are checked here, so an
    unknown name fails now rather than on the GPU machine.
    """
    import trl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reward_specs = task.rewards_for(spec)
    weights = [w for _, _, w in build_rewards(reward_specs)]
    system_prompt = task.system_prompt_for(spec)
    for name, rows in (("train", task.train), ("eval", task.eval)):
        lines = [json.dumps(r, ensure_ascii=False, default=str) for r in trl_rows(rows, system_prompt)]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = grpo_config_kwargs(spec, weights)
    cfg.pop("seed")
    model = _hub_model(spec.model)
    values = {k: _lit(v) for k, v in cfg.items()}
    lora = spec.lora_kwargs()
    fill = {
        **values,
        "title": _doc_text(f"{spec.task} on {spec.model}"),
        "task_line": _doc_text(f"{task.name}: {task.description}"),
        "model_doc": _doc_text(model),
        "model": model,
        "model_repr": _lit(model),
        "prompts_per_step": spec.prompts_per_step,
        "precision": _PRECISION[spec.dtype],
        "seed": spec.seed,
        "eval_strategy": _lit("steps" if spec.eval_every else "no"),
        "eval_steps": max(1, spec.eval_every) * spec.num_iterations,  # optimizer steps, as max_steps
        "rewards": "\n".join(
            f"    RewardSpec({_lit(r.name)}, {r.weight!r}, {_lit(r.params)})," for r in reward_specs
        ),
        "lora": "None"
        if lora is None
        else "dict(" + ", ".join(f"{k}={_lit(v)}" for k, v in lora.items()) + ")",
    }
    (out / "train.py").write_text(TRAIN_PY.substitute(fill), encoding="utf-8")
    (out / "accelerate_config.yaml").write_text(
        ACCELERATE_YAML.substitute(mixed_precision=_MIXED[spec.dtype])
    )
    readme = README_MD.substitute(
        fill, n_train=len(task.train), n_eval=len(task.eval), trl_version=trl.__version__
    )
    (out / "README.md").write_text(readme, encoding="utf-8")
    (out / "run_spec.json").write_text(spec.to_json() + "\n", encoding="utf-8")
    return out
