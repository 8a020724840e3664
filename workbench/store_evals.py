"""The run store's held-out records: the evaluations the worker makes during training, and the best weights.

Mixed into `store.Run` (which gives `dir`, `id`, `spec` and `_db()`), so callers write `run.evals()`,
`run.eval_answers()`, `run.best_weights()` and `run.require_weights("best")` as for any other record of a run.

- `evals` table in run.db: one row per evaluated step, its `eval/...` metrics and that evaluation's answers (prompt,
  answer, degenerate reason, ...), written in one transaction as steps are; `Run.truncate_steps` drops the ones a
  resume redoes. Runs created before the table existed get it on their first write and read as having none.
- `best/`: the weights whose held-out score (the spec's `keep_best_by`) is the best so far, with
  `workbench_best.json` ({step, by, score, better}) inside; written into a temp folder and renamed into place.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import StoreError
from .osutil import json_safe, replace_dir, write_json_atomic

EVALS_TABLE = (
    "CREATE TABLE IF NOT EXISTS evals (step INTEGER PRIMARY KEY, wall_time REAL NOT NULL, metrics TEXT NOT NULL, "
    "answers TEXT NOT NULL)"
)
BEST_INFO = "workbench_best.json"
WEIGHTS = ("last", "best")


class HeldOutRecords:
    """Held-out evaluations and best weights of one run (a mixin of store.Run)."""

    dir: Path
    id: str

    # --- evaluations
    def append_eval(self, step: int, metrics: dict[str, Any], answers: list[dict[str, Any]]) -> None:
        """Store one held-out evaluation (its eval/... metrics and answers) in one transaction; a repeat replaces."""
        m, a = json.dumps(json_safe(metrics)), json.dumps(json_safe(answers))
        with self._db() as con:
            con.execute(EVALS_TABLE)
            con.execute("INSERT OR REPLACE INTO evals VALUES (?, ?, ?, ?)", (int(step), time.time(), m, a))

    def evals(self) -> list[dict[str, Any]]:
        """One dict per held-out evaluation, in step order: {"step", "wall_time", "eval/reward", ...}."""
        rows = self._evals_query("SELECT step, wall_time, metrics FROM evals ORDER BY step")
        return [{"step": r[0], "wall_time": r[1], **json.loads(r[2])} for r in rows]

    def eval_answers(self, step: int | None = None) -> list[dict[str, Any]]:
        """The answers of the evaluation at `step` (None = the latest): {prompt, answer, degenerate_reason, ...}."""
        where, args = ("WHERE step = ?", (step,)) if step is not None else ("ORDER BY step DESC LIMIT 1", ())
        rows = self._evals_query(f"SELECT answers FROM evals {where}", args)
        return json.loads(rows[0][0]) if rows else []

    def _evals_query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._db() as con:
            try:
                return con.execute(sql, args).fetchall()
            except sqlite3.OperationalError as e:  # a run from before evals were kept has none
                if "no such table" in str(e):
                    return []
                raise

    @staticmethod
    def _truncate_evals(con: sqlite3.Connection, after: int) -> None:
        con.execute(EVALS_TABLE)
        con.execute("DELETE FROM evals WHERE step > ?", (after,))

    # --- the best weights
    def best_tmp_dir(self) -> Path:
        """A fresh temp folder to save the best weights into; pass it to commit_best()."""
        return Path(tempfile.mkdtemp(prefix=".tmp-best-", dir=self.dir))

    def commit_best(self, tmp: Path, info: dict[str, Any]) -> Path:
        """Rename `tmp` into place as best/, with `info` ({step, by, score, better}) written inside it first."""
        write_json_atomic(Path(tmp) / BEST_INFO, json_safe(info))
        replace_dir(Path(tmp), self.dir / "best")
        return self.dir / "best"

    def best_weights(self) -> Path | None:
        p = self.dir / "best"
        return p if (p / BEST_INFO).is_file() else None

    def best_info(self) -> dict[str, Any] | None:
        """{"step", "by", "score", "better"} of the best weights, or None before the first held-out evaluation."""
        p = self.best_weights()
        try:
            return json.loads((p / BEST_INFO).read_text()) if p else None
        except (OSError, ValueError):
            return None

    def require_best(self, which: str = "best") -> Path:
        """best_weights(), or a StoreError that says why there are none and what to use instead."""
        if which != "best":
            raise StoreError(f"weights {which!r} is not one of {', '.join(WEIGHTS)}")
        best = self.best_weights()
        if best is not None:
            return best
        spec = self.spec
        if not spec.eval_every:
            why = "held-out evaluation is off (eval_every=0); use the last weights, or train with eval_every > 0"
        else:
            why = (
                f"it is saved at each held-out evaluation (step 0, then every {spec.eval_every} steps) whose "
                f"{spec.keep_best_by} score is the best so far; wait for the first one, or use the last weights"
            )
        raise StoreError(f"run {self.id} has no best checkpoint yet: {why}")
