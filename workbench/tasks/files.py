"""Your own prompts: "file:<path>" (CSV, JSONL or Parquet) and "hub:<dataset id>" (Hugging Face datasets).

Every row is checked before anything is returned, so a bad file fails whole, with a message naming the problem and
the row: too big, not UTF-8, unreadable, no `prompt` column, an empty or non-text prompt, too few rows. Columns
other than `prompt` travel with each row as reference columns (e.g. `answer` for the correctness rewards).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from ..config import Limits, RewardSpec, RunSpec, workbench_home
from ..limits import on_space, reads_server_file
from ..osutil import json_safe
from ..rewards import to_number
from .base import Task, TaskError, check_prompt, split_rows

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
# rows read from a hub dataset (streamed): enough for any run here, without downloading it all
HUB_ROWS = 5000
# Hub datasets name their columns many ways; these are read as "prompt" and "answer" when those are absent.
PROMPT_ALIASES = ("question", "problem", "instruction", "query", "input")
ANSWER_ALIASES = ("solution", "final_answer", "target")


def load_file(path_text: str, spec: RunSpec, limits: Limits | None = None) -> Task:
    limits = limits or Limits.from_env()
    path = Path(path_text.strip()).expanduser()
    if on_space() and path.resolve().parent != (workbench_home() / "uploads").resolve():
        raise TaskError("on a Space a file task must be an upload: upload the file with the Upload box")
    df, where = read_table(path, limits.max_upload_mb, limits.max_upload_rows)
    rows = frame_rows(df, path.name, where)
    train, eval_ = split_rows(rows, spec, path.name)
    columns = [c for c in df.columns if c != "prompt"]
    return Task(
        name=f"file:{path.name}",
        description=f"{path.name}: {len(rows)} prompts"
        + (f", reference columns {', '.join(columns)}" if columns else ""),
        train=train,
        eval=eval_,
        system_prompt="",
        rewards=suggest_rewards(rows),
    )


def read_table(path: Path, max_mb: float, max_rows: int | None = None):
    """(DataFrame, row -> "row N" label): size, format, encoding and parse checked, columns as text names.

    A small file can expand a thousandfold (a 6 KB Parquet file of a million rows, a CSV of one-character lines), so
    rows are counted before the whole file is read: from Parquet's metadata (with its uncompressed size), and for
    CSV and JSONL while parsing, stopping one row past `max_rows`.
    """
    import pandas as pd

    if not path.is_file():
        raise TaskError(f"no file at {path}: check the path (a .csv, .jsonl or .parquet file)")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise TaskError(
            f"{path.name}: unsupported file type {path.suffix or '(none)'}; use .csv, .jsonl or .parquet"
        )
    mb = path.stat().st_size / 2**20
    if mb > max_mb:
        raise TaskError(
            f"{path.name} is {mb:.1f} MB, above the upload limit of {max_mb:g} MB: use fewer rows (the server's "
            "owner can raise the limit with WORKBENCH_MAX_UPLOAD_MB)"
        )
    if path.stat().st_size == 0:
        raise TaskError(f"{path.name} is empty: it needs a prompt column and some rows")
    if fmt == "parquet":
        _parquet_fits(path, max_mb, max_rows)
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a broken file
            raise TaskError(f"{path.name} is not a readable Parquet file ({type(e).__name__}: {e})") from None
        return _named(df, path.name), lambda i: f"{path.name} row {i + 1}"
    text = _utf8(path)
    if fmt == "csv":
        try:
            # All cells as text, "" for empty: "007" stays "007" and "NA" stays "NA" (they can be answers).
            cap = None if max_rows is None else max_rows + 1
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, nrows=cap)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise TaskError(f"{path.name} is not valid CSV ({str(e).strip()})") from None
        _rows_fit(path, len(df), max_rows)
        return _named(df, path.name), lambda i: f"{path.name} row {i + 1} (header not counted)"
    records, lines = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise TaskError(f"{path.name} line {n} is not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise TaskError(
                f'{path.name} line {n} must be a JSON object like {{"prompt": "..."}}, not {type(obj).__name__}'
            )
        records.append(obj)
        lines.append(n)
        _rows_fit(path, len(records), max_rows)
    if not records:
        raise TaskError(f"{path.name} has no JSON lines: each line should be an object with a prompt")
    return _named(pd.DataFrame.from_records(records), path.name), lambda i: f"{path.name} line {lines[i]}"


def _rows_fit(path: Path, n: int, max_rows: int | None, exact: bool = False) -> None:
    """Refuse more than max_rows rows; `exact`: n is the file's count (Parquet), else a count that stopped early."""
    if max_rows is not None and n > max_rows:
        count = n if exact else f"more than {max_rows}"
        raise TaskError(
            f"{path.name} has {count} rows, above this server's limit of {max_rows}: keep the rows you need (the "
            "server's owner can raise the limit with WORKBENCH_MAX_UPLOAD_ROWS)"
        )


def _parquet_fits(path: Path, max_mb: float, max_rows: int | None) -> None:
    """Refuse from the footer alone: the row count and the uncompressed size, before any column is read."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as e:  # pyarrow raises several types for a broken file
        raise TaskError(f"{path.name} is not a readable Parquet file ({type(e).__name__}: {e})") from None
    _rows_fit(path, meta.num_rows, max_rows, exact=True)
    mb = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / 2**20
    if mb > max_mb:
        raise TaskError(
            f"{path.name} holds {mb:.1f} MB of data uncompressed, above this server's limit of {max_mb:g} MB: keep "
            "the rows you need (the server's owner can raise the limit with WORKBENCH_MAX_UPLOAD_MB)"
        )


def _utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        # -sig: a byte-order mark (Excel writes one) is dropped, not read as text
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TaskError(
            f"{path.name} is not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} cannot be decoded; save the "
            "file as UTF-8 (in Excel: 'CSV UTF-8')"
        ) from None


def _named(df, source: str):
    df.columns = [str(c).strip() for c in df.columns]
    if "prompt" not in df.columns:
        raise TaskError(
            f"{source} has no 'prompt' column (columns: {', '.join(df.columns) or 'none'}): name the column that "
            "holds the prompts 'prompt'"
        )
    return df


def frame_rows(df, source: str, where) -> list[dict]:
    """Validated rows: each prompt checked (the error names the row); other columns as JSON-able values."""
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        row = {k: json_safe(v) for k, v in rec.items() if k != "prompt"}
        rows.append({"prompt": check_prompt(rec["prompt"], where(i)), **row})
    if not rows:
        raise TaskError(f"{source} has a prompt column but no rows: add some")
    return rows


def suggest_rewards(rows: list[dict]) -> list[RewardSpec]:
    """Rewards that fit the columns: the rg verifier, math correctness for numeric answers, else match or length."""
    cols = set(rows[0])
    if "rg_entry" in cols:
        return [RewardSpec("rg_verifier", 1.0)]
    answers = [r.get("answer") for r in rows if r.get("answer") not in (None, "")]
    if answers:
        numeric = sum(to_number(a) is not None for a in answers) / len(answers)
        return [RewardSpec("math_correct" if numeric >= 0.9 else "contains_answer", 1.0)]
    return [RewardSpec("length", 1.0, {"target": 20, "unit": "words"})]


def load_hub(ref: str, spec: RunSpec) -> Task:
    """`hub:<id>[:<config>][@<split>]`, e.g. hub:openai/gsm8k:main@test; streamed, first HUB_ROWS rows."""
    import pandas as pd

    ref = ref.strip()
    ref, _, split = ref.partition("@")
    dataset_id, _, config = ref.partition(":")
    if not dataset_id:
        raise TaskError("hub: needs a dataset id, e.g. hub:openai/gsm8k:main")
    if on_space() and (reads_server_file(dataset_id) or "/" not in dataset_id):
        # load_dataset reads a local folder of that name first, and a bare name may be a builder (csv, json)
        raise TaskError(f"hub:{dataset_id} is not a hub dataset id: on a Space use hub:<org>/<name>")
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, config or None, split=split or "train", streaming=True)
        records = [
            dict(r) for _, r in zip(range(max(HUB_ROWS, spec.train_size + spec.eval_size)), ds, strict=False)
        ]
    except Exception as e:  # datasets raises many types (offline, not found, gated, bad config)
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise TaskError(
            f"could not load hub dataset {dataset_id!r} ({type(e).__name__}: {msg}). If the hub is unreachable from "
            "here (offline), download the data and use file:<path> instead"
        ) from None
    df = pd.DataFrame.from_records(records)
    renamed = _alias(df)
    df = _named(df, f"hub:{dataset_id}")
    rows = frame_rows(df, f"hub:{dataset_id}", lambda i: f"hub:{dataset_id} row {i + 1}")
    train, eval_ = split_rows(rows, spec, f"hub:{dataset_id}")
    return Task(
        name=f"hub:{dataset_id}",
        description=f"hub dataset {dataset_id} ({split or 'train'} split, first {len(rows)} rows){renamed}",
        train=train,
        eval=eval_,
        system_prompt="",
        rewards=suggest_rewards(rows),
    )


def _alias(df) -> str:
    """Rename a known prompt/answer column to prompt/answer; say what was renamed (for the description)."""
    done = []
    for target, aliases in (("prompt", PROMPT_ALIASES), ("answer", ANSWER_ALIASES)):
        if target not in df.columns:
            hit = next((a for a in aliases if a in df.columns), None)
            if hit:
                df.rename(columns={hit: target}, inplace=True)
                done.append(f"{hit} → {target}")
    return f"; columns renamed: {', '.join(done)}" if done else ""
