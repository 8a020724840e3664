"""The CLI: flags come from the run spec, --json prints exactly one document, errors are one line with exit code 2,
and (slow) train / Ctrl-C / resume / export / compare work end to end on the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import cli
from workbench.config import PRESETS, RunSpec, spec_fields
from workbench.errors import CompareError
from workbench.store import create_run

ROOT = Path(__file__).parents[1]
TINY = ["--model", "tiny-random", "--train-size", "16", "--eval-size", "2", "--max-completion-length", "8",
        "--num-generations", "2", "--dtype", "float32"]  # fmt: skip


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def _wb(*args: str, **kw) -> subprocess.CompletedProcess:
    env = _env()
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=env, **kw
    )


def _train_parser():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return sub.choices["train"]


def test_every_command_of_the_parser_has_a_handler():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(cli.COMMANDS)


def test_every_spec_field_is_a_flag_with_its_help_and_range():
    opts = {s: a for a in _train_parser()._actions for s in a.option_strings}
    for f in spec_fields():
        flag = "--reward" if f.name == "rewards" else f"--{f.name.replace('_', '-')}"
        assert flag in opts, flag
        assert f.metadata["help"].replace("%", "%%") in opts[flag].help
        if f.metadata.get("range"):
            assert f"[{f.metadata['range'][0]}..{f.metadata['range'][1]}]" in opts[flag].help
        if f.metadata.get("choices"):
            assert tuple(opts[flag].choices) == f.metadata["choices"]
    assert "--no-use-lora" in opts and "--max_steps" in opts  # TRL-style underscores work too


def test_preset_then_config_then_flags(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"max_steps": 7, "learning_rate": 1e-4, "temperature": 0.7}))
    args = cli.build_parser().parse_args(
        [
            "train",
            "--preset",
            "reasoning",
            "--config",
            str(cfg),
            "--max-steps",
            "3",
            "--no-use-lora",
            "--reward",
            "length:1,target=20",
            "--reward",
            "format_soft:0.5",
        ]  # fmt: skip
    )
    spec = cli.spec_from_args(args)
    assert spec.task == PRESETS["reasoning"].task  # from the preset
    assert spec.learning_rate == 1e-4 and spec.temperature == 0.7  # from the file
    assert spec.max_steps == 3 and spec.use_lora is False  # flags win
    assert [(r.name, r.weight, r.params) for r in spec.rewards] == [
        ("length", 1.0, {"target": 20}),
        ("format_soft", 0.5, {}),
    ]
    assert cli.spec_from_args(cli.build_parser().parse_args(["train"])) == RunSpec()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--max-steps", "0"], "max_steps=0 is out of range"),
        (["train", "--max-steps", "many"], "invalid int value"),
        (["train", "--loss-type", "ppo"], "invalid choice"),
        (["train", "--config", "/nonexistent/c.json"], "cannot read config file"),
        (["show", "20250101-120000-abcdef"], "workbench runs"),
        (["show", "../../etc"], "not a run id"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_errors_are_one_line_exit_2_and_json_gets_an_error_document(capsys, argv, fragment):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and fragment in err
    assert "Traceback" not in err
    assert cli.main([*argv, "--json"]) == 2
    out, err = capsys.readouterr()
    assert fragment in json.loads(out)["error"]


def test_a_comparison_error_is_shown_as_written_and_anything_else_with_its_type(capsys, monkeypatch):

    def fail(exc):
        def cmd(args):
            raise exc

        return cmd

    monkeypatch.setitem(cli.COMMANDS, "runs", fail(CompareError("no prompts to compare: give one")))
    assert cli.main(["runs"]) == 2
    assert capsys.readouterr().err == "error: no prompts to compare: give one\n"
    monkeypatch.setitem(cli.COMMANDS, "runs", fail(KeyError("x")))
    assert cli.main(["runs"]) == 2
    assert capsys.readouterr().err == "error: KeyError: 'x'\n"


def test_stop_and_kill_take_a_queued_run_out_of_the_queue(capsys):
    a, b = create_run(RunSpec(model="tiny-random")), create_run(RunSpec(model="tiny-random"))
    assert cli.main(["stop", a.id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"run_id": a.id, "action": "stop"}
    assert cli.main(["kill", b.id]) == 0
    assert capsys.readouterr().out.strip() == f"run {b.id} killed"
    assert a.status()["reason"] == "stopped before it started"
    assert b.status()["reason"] == "killed before it started"


def test_runs_and_show_print_one_json_document(capsys):
    assert cli.main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    run = create_run(RunSpec(model="tiny-random", max_steps=3), status="stopped")

    class Step:  # a step as the engine returns it, with a NaN that strict JSON cannot carry
        step, metrics = 1, {"reward": float("nan"), "kl": 0.0}
        episodes = [{"group": 0, "prompt": "p", "completion": "c", "rewards": {"len": 1.0}, "reward": 1.0}]

    run.append_step(Step)
    assert cli.main(["runs", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["id"] == run.id and row["state"] == "stopped" and row["steps_done"] == 1
    assert cli.main(["show", run.id, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # json.loads would fail on two documents or on a bare NaN
    assert doc["metrics"][0]["reward"] is None and doc["episodes"][0]["completion"] == "c"
    assert doc["spec"]["max_steps"] == 3 and "torch" in doc["versions"]
    assert cli.main(["show", run.id]) == 0
    assert f"run {run.id}: stopped, 1/3 steps" in capsys.readouterr().out
    # the store keeps the reason as a fact; the CLI adds the command that continues a stopped run
    run.set_status("stopped", "stopped at step 1/3")
    assert cli.main(["show", run.id]) == 0
    assert f"(stopped at step 1/3; continue it with `workbench resume {run.id}`)" in capsys.readouterr().out


def test_export_copies_the_adapter_with_the_run_spec_and_refuses_a_full_folder(tmp_path, capsys):
    run = create_run(RunSpec(model="tiny-random"))
    assert cli.main(["export", run.id, "--to", str(tmp_path / "x")]) == 2
    assert "no adapter or checkpoint yet" in capsys.readouterr().err
    tmp = run.adapter_tmp_dir()
    (tmp / "adapter_config.json").write_text("{}")
    run.commit_adapter(tmp)
    assert cli.main(["export", run.id, "--to", str(tmp_path / "x"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["to"] == str(tmp_path / "x")
    about = json.loads((tmp_path / "x" / "workbench_run.json").read_text())
    assert (
        about["run_id"] == run.id and about["spec"]["model"] == "tiny-random" and about["source"] == "adapter"
    )
    assert (tmp_path / "x" / "adapter_config.json").exists()
    assert cli.main(["export", run.id, "--to", str(tmp_path / "x")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_module_entry_point_json_on_stdout_only():
    p = _wb("runs", "--json")
    assert p.returncode == 0 and json.loads(p.stdout) == []
    p = _wb("train", "--max-steps", "-1", "--json")
    assert (
        p.returncode == 2 and "out of range" in json.loads(p.stdout)["error"] and "Traceback" not in p.stderr
    )


# --- end to end on the tiny model -----------------------------------------------------------------------------
@pytest.mark.slow
def test_train_json_then_export_merged_and_trl_then_compare(tmp_path):
    p = _wb("train", *TINY, "--max-steps", "3", "--save-every", "2", "--json", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    assert doc["status"] == "finished" and doc["steps_done"] == 3 and "reward" in doc["final_metrics"]
    assert "step    3/3" in p.stderr and "ETA" in p.stderr and f"stored in {doc['dir']}" in p.stderr
    run_id = doc["run_id"]

    p = _wb("export", run_id, "--to", str(tmp_path / "merged"), "--merged", "--json", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # a plain model: no peft needed
    assert model.config.num_hidden_layers == 2 and (tmp_path / "merged" / "workbench_run.json").exists()

    p = _wb("export", run_id, "--trl", str(tmp_path / "trl"), "--json", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert Path(json.loads(p.stdout)["trl"]).exists()

    p = _wb("compare", run_id, "--json", timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    cmp = json.loads(p.stdout)
    assert "summary" in cmp, cmp.keys()


def _sigint_as_in_a_terminal() -> None:
    """A shell that runs the tests in the background starts them with SIGINT ignored, and a child inherits that
    (Python then never raises KeyboardInterrupt): the CLI here gets Ctrl-C as a terminal delivers it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_stops_gracefully_and_resume_finishes(tmp_path):
    env = _env()
    # 100 steps: a tiny step can take 30 ms, and the stop must land before the end (the CLI looks every 0.5 s)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "train", *TINY, "--max-steps", "100", "--save-every", "1000",
         "--eval-every", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=_sigint_as_in_a_terminal,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step    2/100"):
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    text = "".join(lines) + rest
    assert proc.returncode == 0, text
    assert "stopping after the current step" in text and "stopped:" in text and "adapter:" in text
    run_id = next(x.split()[1] for x in lines if x.startswith("run "))
    p = _wb("resume", run_id, "--json", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    assert doc["status"] == "finished" and doc["steps_done"] == 100
