"""The `workbench` command line (same as `python -m workbench`).

    workbench train [--preset quick] [--config FILE] [--max-steps 10 --reward 'length:1,target=20' ...] [--detach]
    workbench runs | show RUN | resume RUN | stop RUN | kill RUN
    workbench compare RUN [--mode greedy|sampled] [--csv FILE]       base vs tuned on the held-out prompts
    workbench train --variant A --variant B  |  compare RUN1 RUN2 ... an A/B of reward designs (cli_ab.py)
    workbench rate RUN [--summary]                                    judge the answers blind (cli_rate.py)
    workbench export RUN --to DIR [--merged]  |  workbench export RUN --trl DIR
    workbench preflight [train flags]  |  workbench replay RUN --reward ...   the reward design lab (lab/cli.py)
    workbench models [--prepare]                                      list models; convert the bundled one
    workbench worker RUN                                              internal: the training process
    workbench standby SPEC_JSON                                       internal: a worker waiting for its run

The parser, with the run flags generated from RunSpec, is built in cli_args.py; this module holds the commands.
Every command takes --json: stdout then carries exactly one JSON document and everything else goes to stderr.
Errors are one line on stderr and exit code 2 (with --json, stdout carries {"error": ...}).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .cli_ab import cmd_compare_many, cmd_train_ab, wants_many
from .cli_args import UsageError, decoding_args, spec_from_args
from .cli_follow import Result, fmt_num, follow, reason_text
from .cli_parser import build_parser
from .cli_rate import cmd_rate, summary_lines, with_ratings
from .errors import ConfigError, UserError
from .lab.cli import COMMANDS as LAB_COMMANDS
from .osutil import json_safe

__all__ = ["COMMANDS", "build_parser", "main", "spec_from_args"]


# --- commands -----------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> Result:
    from . import runner
    from .store import open_run

    if args.variant:  # an A/B of reward designs: one run per variant, queued together
        return cmd_train_ab(args)
    run_id = runner.start_run(spec_from_args(args))
    if args.detach:
        run = open_run(run_id)
        st = run.status()
        doc = {"run_id": run_id, "dir": str(run.dir), "status": st["state"], "reason": st.get("reason")}
        return 0, doc, f"run {run_id} {st['state']}, stored in {run.dir}\nwatch it: workbench show {run_id}"
    return follow(run_id)


def cmd_resume(args: argparse.Namespace) -> Result:
    from . import runner
    from .store import open_run

    runner.resume_run(args.run)
    run = open_run(args.run)
    since = run.checkpoint_step(run.latest_checkpoint()) if run.latest_checkpoint() else 0
    if args.detach:
        st = run.status()
        return 0, {"run_id": args.run, "status": st["state"]}, f"run {args.run} {st['state']}"
    print(f"resuming from step {since}", flush=True)
    return follow(args.run, since)


def cmd_stop(args: argparse.Namespace) -> Result:
    """Ask the run to stop after its current step (it saves its adapter)."""
    from . import runner

    runner.stop_run(args.run)
    return 0, {"run_id": args.run, "action": "stop"}, f"run {args.run} asked to stop after its current step"


def cmd_kill(args: argparse.Namespace) -> Result:
    """End the run's worker now; steps and checkpoints written so far stay."""
    from . import runner

    runner.kill_run(args.run)
    return 0, {"run_id": args.run, "action": "kill"}, f"run {args.run} killed"


def cmd_runs(args: argparse.Namespace) -> Result:
    from . import runner
    from .store import list_runs

    runner.reconcile()
    rows = []
    for run in list_runs():
        st, spec, reward = run.status(), run.spec, run.last_metrics().get("reward")
        keys = ("state", "reason", "steps_done", "max_steps")
        rows.append({"id": run.id, **{k: st[k] for k in keys}, "reward": reward, "task": spec.task,
                     "model": spec.model, "dir": str(run.dir)})  # fmt: skip
    lines = [f"{'RUN':22} {'STATE':11} {'STEPS':>9} {'REWARD':>7}  TASK / MODEL"]
    lines += [
        f"{r['id']:22} {r['state']:11} {r['steps_done']:>4}/{r['max_steps']:<4} {fmt_num(r['reward']):>7}  "
        f"{r['task']} / {r['model']}"
        for r in rows
    ]
    empty = "no runs yet: start one with `workbench train --preset quick`"
    return 0, rows, "\n".join(lines) if rows else empty


def cmd_show(args: argparse.Namespace) -> Result:
    from .heldout import heldout_lines
    from .store import FAILED, open_run
    from .verdict import heldout_warnings

    run = open_run(args.run)
    doc = {
        **run.summary(),
        "spec": run.spec.to_dict(),
        "versions": run.versions(),
        "metrics": run.metrics(),
        "episodes": run.episodes(),
        "evals": run.evals(),
        "eval_answers": run.eval_answers(),
        "best": run.best_info(),
    }
    doc["warnings"] = heldout_warnings(doc["metrics"], doc["evals"])
    st = doc["status"]
    reason = reason_text(run.id, st)
    lines = [
        f"run {run.id}: {st['state']}, {st['steps_done']}/{st['max_steps']} steps"
        + (f" ({reason})" if reason else ""),
        f"  folder  {run.dir}",
        f"  model   {doc['model']}   task {doc['task']}   engine {doc['engine']}",
        f"  adapter {doc['adapter'] or '-'}   latest checkpoint {doc['latest_checkpoint'] or '-'}",
    ]
    m = doc["last_metrics"]
    if m:
        lines.append(
            f"  step {m['step']}: reward {fmt_num(m.get('reward'))}, kl {fmt_num(m.get('kl'))}, "
            f"length {fmt_num(m.get('completions/mean_length'), '.1f')}"
        )
    for e in doc["episodes"][:4]:
        lines.append(f"  [{fmt_num(e['reward'], '+.2f')}] {e['completion'][:100]!r}")
    lines += heldout_lines(doc["evals"], doc["best"]) + [f"  warning: {w}" for w in doc["warnings"]]
    if st["state"] in FAILED and run.log_path.exists():
        lines += ["  last lines of worker.log:"] + [
            "    " + x for x in run.log_path.read_text(errors="replace").splitlines()[-5:]
        ]
    return 0, doc, "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> Result:
    from .evaluate import compare
    from .heldout import best_text
    from .store import open_run

    if wants_many(args):  # several runs, or an experiment: the base and every tuned model at once
        return cmd_compare_many(args)
    run = open_run(args.run)
    cmp = compare(run.id, run.require_weights(args.weights), **decoding_args(args))
    if args.csv:
        cmp.to_csv(args.csv)
    best = run.best_info() if args.weights == "best" else None
    doc = with_ratings({**cmp.to_dict(), "weights_from": {"weights": args.weights, **(best or {})}})
    rated = ["", "Your blind ratings:", *summary_lines(doc["ratings"])] if "ratings" in doc else []
    return 0, doc, (f"tuned = {best_text(best)}\n" if best else "") + "\n".join([compare_text(cmp), *rated])


def compare_text(cmp) -> str:
    """The verdict first, then rewards and checks with their CIs, then the degenerate tuned answers to read."""
    v = cmp.verdict
    stats = cmp.statistics().set_index(["kind", "name"]).round(3).to_string()
    lines = [f"{v.level.upper()}: {v.headline}", *[f"  - {r}" for r in v.reasons[1:]], "", stats]
    t = cmp.table
    bad = t[t["tuned:degenerate"] > 0]
    if len(bad):
        lines += [
            "",
            f"degenerate tuned answers ({len(bad)} of {len(t)}; base: {int(t['base:degenerate'].sum())}):",
        ]
        for _, row in bad.head(5).iterrows():
            lines.append(
                f"  {str(row['prompt'])[:60]!r} -> {str(row['tuned'])[:80]!r} ({row['tuned:degenerate_reason']})"
            )
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> Result:
    from .store import open_run

    run = open_run(args.run)
    if args.trl:
        from .lab.export import add_run_files
        from .recovery import task_for_run
        from .trl_export import export_trl

        out = export_trl(run.spec, task := task_for_run(run), Path(args.trl))
        lab = add_run_files(run, task, out)  # the pre-flight report, stored completions, check_rewards.py
        return 0, {"run_id": run.id, "trl": str(out), **lab}, f"TRL script written to {out}"
    dest = Path(args.to).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"{dest} exists and is not empty: choose a new folder")
    src = run.require_weights(args.weights)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        if args.merged and (src / "adapter_config.json").exists():
            from .models import load_model, merge_adapter

            model, tok = load_model(run.spec.model, dtype="float32", device="cpu")
            merge_adapter(model, src, run.spec.model).save_pretrained(tmp)
            tok.save_pretrained(tmp)
        else:  # the adapter, or an already full model (use_lora off)
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        # the run spec beside the weights; not "config.json", which is the model's own config in a full model
        about = {
            "run_id": run.id,
            "source": str(src.relative_to(run.dir)),
            "merged": bool(args.merged),
            "best": run.best_info() if args.weights == "best" else None,
            "spec": run.spec.to_dict(),
            "versions": run.versions(),
        }
        (tmp / "workbench_run.json").write_text(json.dumps(about, indent=2))
        tmp.chmod(0o755)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kind = "merged model" if args.merged else "adapter"
    return 0, {"run_id": run.id, "to": str(dest), "merged": bool(args.merged)}, f"{kind} written to {dest}"


def cmd_models(args: argparse.Namespace) -> Result:
    from . import models

    if args.prepare:
        for name in models.BUNDLED:
            models.prepare_bundled(name)
    infos = models.list_models()
    lines = [
        f"{i.name:24s} {i.about} — "
        + (f"prepared at {i.path}" if i.prepared else "not prepared (run: workbench models --prepare)")
        for i in infos
    ]
    return 0, [i.__dict__ for i in infos], "\n".join(lines)


def cmd_worker(args: argparse.Namespace) -> Result:
    from .store import open_run
    from .worker import main as worker_main
    from .worker import nice_down

    nice_down()
    code = worker_main(args.run)
    st = open_run(args.run).status()
    return code, {"run_id": args.run, "status": st["state"], "reason": st.get("reason")}, ""


def cmd_standby(args: argparse.Namespace) -> Result:
    from .config import RunSpec
    from .standby import wait_for_run
    from .worker import nice_down

    nice_down()
    args.run = wait_for_run(RunSpec.from_json(args.spec))
    if args.run is None:  # the server went away before it had a run for this worker
        return 0, {"run_id": None, "status": None}, ""
    return cmd_worker(args)


# --- entry point --------------------------------------------------------------------------------------------
COMMANDS = {
    "train": cmd_train,
    "runs": cmd_runs,
    "show": cmd_show,
    "resume": cmd_resume,
    "stop": cmd_stop,
    "kill": cmd_kill,
    "compare": cmd_compare,
    "export": cmd_export,
    "models": cmd_models,
    "worker": cmd_worker,
    "standby": cmd_standby,
    "rate": cmd_rate,
    **LAB_COMMANDS,
}


def _fail(msg: str, as_json: bool) -> int:
    print(f"error: {msg}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": msg}))
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return _fail(str(e), as_json)
    try:
        # with --json, anything a library prints goes to stderr: stdout holds only the one document
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            code, doc, text = COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return _fail("interrupted", as_json)
    except Exception as e:  # one line, never a traceback (WORKBENCH_DEBUG=1 shows it)
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        msg = (str(e).strip() or type(e).__name__).splitlines()[0]
        return _fail(msg if isinstance(e, UserError) else f"{type(e).__name__}: {msg}", as_json)
    if args.json:
        print(json.dumps(json_safe(doc)))
    elif text:
        print(text)
    return code
