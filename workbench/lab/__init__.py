"""The reward design lab: find out whether a reward teaches what you mean before a training run does.

    workbench preflight --preset quick [--json]          # sample the base model, score it, try the exploit battery
    workbench replay RUN --reward 'length:1,target=20'   # re-score a run's stored completions with another reward set

Modules: `common` (scoring texts exactly as the engine does, the stored steps of a run with their task rows, rank
statistics), `battery` (canned adversarial answers and the flags they raise), `preflight` (sampling and the report),
`replay` (old against new advantages), `export` (what `export --trl` adds from a run: the pre-flight report, the
stored completions and a script that checks the exported rewards reproduce them), `trl_checks` (the checks logged
by the exported TRL script), `cli` (the two commands). The lab knows nothing of the UI (`workbench.ui.lab` shows it).
"""
