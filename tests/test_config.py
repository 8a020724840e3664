"""The run spec: validation messages say what to change; JSON round-trips; presets are valid specs."""

from __future__ import annotations

import pytest

from workbench.config import PRESETS, ConfigError, Limits, RewardSpec, RunSpec, spec_fields


def test_every_field_has_help_and_numbers_have_ranges():
    for f in spec_fields():
        assert f.metadata["help"], f.name
        if f.type in ("int", "float"):
            assert f.metadata["range"] is not None, f.name


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"num_generations": 1}, "num_generations=1 is out of range"),
        ({"loss_type": "ppo"}, "not one of grpo, dr_grpo, dapo, bnpo"),
        ({"epsilon": 0.3, "epsilon_high": 0.2}, "raise epsilon_high"),
        ({"prompts_per_step": 8, "train_size": 4}, "lower prompts_per_step or raise train_size"),
        ({"max_steps": 2.5}, "whole number"),
        ({"model": " "}, "bundled"),
    ],
)
def test_invalid_specs_say_what_to_change(changes, fragment):
    with pytest.raises(ConfigError) as e:
        RunSpec(**changes)
    assert fragment in str(e.value)


def test_json_round_trip_and_unknown_keys():
    spec = RunSpec(rewards=["length:0.5,target=20,unit=words"], max_steps=7)
    back = RunSpec.from_json(spec.to_json())
    assert back == spec
    assert back.rewards[0] == RewardSpec("length", 0.5, {"target": 20, "unit": "words"})
    with pytest.raises(ConfigError, match="unknown setting"):
        RunSpec.from_dict({"max_step": 3})
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunSpec.from_json("{max_steps: 3")


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"lora_target_modules": 3}, "lora_target_modules must be text"),
        ({"task": ["concise"]}, "task must be text"),
        ({"model": None}, "model must be text"),
        ({"use_lora": "false"}, "use_lora must be true or false"),
        ({"mask_truncated_completions": 1}, "must be true or false"),
        ({"rewards": 5}, "rewards must be a list"),
        ({"rewards": ["  "]}, "a reward is empty"),
        ({"rewards": [{"name": 3}]}, "name must be text"),
        ({"rewards": [{"name": "length", "weight": "x"}]}, "weight must be a number"),
        ({"rewards": [{"name": "length", "weight": True}]}, "weight must be a number"),
        ({"rewards": [{"name": "length", "params": 5}]}, "params must be an object"),
    ],
)
def test_a_config_file_of_the_wrong_types_is_refused_with_what_to_change(settings, fragment):
    # JSON puts any type anywhere: each is a message, never a traceback from deeper down
    with pytest.raises(ConfigError, match=fragment):
        RunSpec.from_dict(settings)


def test_rewards_as_one_line_of_text():
    spec = RunSpec.from_dict({"rewards": "length:1,target=12; contains_answer:2"})
    assert [(r.name, r.weight) for r in spec.rewards] == [("length", 1.0), ("contains_answer", 2.0)]


def test_reward_spec_parse_errors():
    with pytest.raises(ConfigError, match="must be a number"):
        RewardSpec.parse("length:heavy")
    with pytest.raises(ConfigError, match="key=value"):
        RewardSpec.parse("length:1,target")


def test_presets_are_valid_and_limits_apply(monkeypatch):
    assert set(PRESETS) >= {"quick", "reasoning"}
    monkeypatch.setenv("WORKBENCH_MAX_STEPS", "20")
    limits = Limits.from_env()
    with pytest.raises(ConfigError, match="limit of 20"):
        limits.check(RunSpec(max_steps=50))
    limits.check(RunSpec(max_steps=20))
