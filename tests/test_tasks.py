"""Tasks: the bundled concise set, generated reasoning-gym tasks, uploads (every validation failure named with its
row), hub offline, and the train/eval split (deterministic, eval stable, never overlapping)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest

from workbench.config import Limits, RewardSpec, RunSpec
from workbench.rewards import build_rewards
from workbench.tasks import BUILTIN_TASKS, Task, TaskError, chat_messages, load_task, prompt_batches


def spec(task: str, **kw) -> RunSpec:
    kw.setdefault("train_size", 16)
    kw.setdefault("eval_size", 4)
    return RunSpec(task=task, **kw)


def prompts(rows: list[dict]) -> list:
    return [json.dumps(r["prompt"]) for r in rows]


# --- split --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["concise", "arithmetic"])
def test_split_is_deterministic_disjoint_and_eval_stable(task):
    a = load_task(spec(task, seed=1, train_size=40, eval_size=8))
    b = load_task(spec(task, seed=1, train_size=40, eval_size=8))
    assert (a.train, a.eval) == (b.train, b.eval)  # same seed, same split
    assert len(a.train) == 40 and len(a.eval) == 8
    assert not set(prompts(a.train)) & set(prompts(a.eval))  # held-out prompts are never trained on
    assert len(set(prompts(a.train))) == 40  # no duplicate prompt inside train either
    bigger = load_task(spec(task, seed=1, train_size=80, eval_size=8))
    assert bigger.eval == a.eval  # eval is taken first: more training prompts do not move it
    other = load_task(spec(task, seed=2, train_size=40, eval_size=8))
    assert other.eval != a.eval  # another seed, another split


def test_prompt_batches_cover_each_epoch_once_and_a_resume_sees_the_same_prompts():
    rows = [{"prompt": f"q{i}"} for i in range(7)]
    straight = list(itertools.islice(prompt_batches(rows, 3, seed=0), 6))
    # 7 rows in batches of 3: two batches an epoch, the odd row left out; each epoch a new order, no repeats inside
    first_epoch = prompts(straight[0] + straight[1])
    assert len(set(first_epoch)) == 6 and prompts(straight[2] + straight[3]) != first_epoch
    # a run resumed after step 3 sees what the uninterrupted run saw at steps 4, 5, 6
    assert list(itertools.islice(prompt_batches(rows, 3, seed=0, start_step=3), 3)) == straight[3:]
    other = list(itertools.islice(prompt_batches(rows, 3, seed=1), 6))
    assert other != straight  # another seed, another order
    with pytest.raises(ValueError, match="prompts_per_step=8"):
        next(prompt_batches(rows, 8, seed=0))


def test_sizes_clamp_to_what_exists(tmp_path):
    f = tmp_path / "ten.csv"
    pd.DataFrame({"prompt": [f"question {i}?" for i in range(10)]}).to_csv(f, index=False)
    t = load_task(spec(f"file:{f}", train_size=100, eval_size=24))
    # 10 rows: eval takes at most half (5) so training keeps the rest
    assert (len(t.train), len(t.eval)) == (5, 5)
    assert not set(prompts(t.train)) & set(prompts(t.eval))


# --- built-in tasks -----------------------------------------------------------------------------------------------


def test_concise_bundled_set():
    t = load_task(spec("concise", train_size=256, eval_size=24))
    rows = t.train + t.eval
    assert (
        len(rows) == 280
        and "400 bundled" in t.description
        and "273 factual ones carry reference answers" in t.description
        and set(BUILTIN_TASKS) >= {"concise", "arithmetic"}
    )
    assert len({r["category"] for r in rows}) >= 12  # many kinds of prompts
    assert all(isinstance(r["prompt"], str) and r["prompt"].strip() for r in rows)
    assert t.rewards[0].name == "length" and t.rewards[0].params["unit"] == "words"
    assert [r.name for r in t.rewards] == ["length", "contains_answer", "repetition"]
    fns = build_rewards(t.rewards)
    ramble = ("Well, the capital of Australia is Canberra, which many people mistake for Sydney because Sydney is the "
              "largest city; it was chosen as a compromise between Sydney and Melbourne.")  # fmt: skip
    texts = ["Canberra is the capital.", ramble, "🌱🌱🌱🌱🌱🌱", "Sydney."]
    totals = [sum(w * (fn(None, [x], answer=[["Canberra"]])[0] or 0) for _, fn, w in fns) for x in texts]
    # the suggested rewards prefer the concise right answer to the rambling one, and both to spam or a short wrong one
    assert totals[0] > totals[1] > max(totals[2], totals[3]), totals
    # a run without rewards or a system prompt of its own takes the task's; one with its own keeps them
    plain = spec("concise")
    assert t.rewards_for(plain) == t.rewards and t.system_prompt_for(plain) == t.system_prompt
    mine = spec("concise", rewards=[RewardSpec("format_soft")], system_prompt="Be brief.")
    assert t.rewards_for(mine) == [RewardSpec("format_soft")] and t.system_prompt_for(mine) == "Be brief."


def test_arithmetic_rewards_agree_with_references():
    t = load_task(spec("arithmetic", seed=7))
    assert "<think>" in t.system_prompt and "<answer>" in t.system_prompt
    fns = build_rewards(t.rewards)
    row = t.eval[0]
    # the question comes after one worked example turn, the format the rewards look for
    example, question = row["prompt"][:-1], row["prompt"][-1]
    assert example[-1]["role"] == "assistant" and "</think><answer>" in example[-1]["content"]
    assert question["role"] == "user" and question["content"].startswith("Calculate")
    right = f"<think>compute {question['content']}</think><answer>{row['answer']}</answer>"
    wrong = f"<think>guess</think><answer>{int(row['answer']) + 1}</answer>"
    cols = {"answer": [row["answer"]] * 2, "rg_entry": [row["rg_entry"]] * 2}
    scores = {n: fn([row["prompt"]] * 2, [right, wrong], **cols) for n, fn, _ in fns}
    assert scores == {"tag_count": [1.0, 1.0], "math_correct": [1.0, 0.0]}
    # the task's own verifier agrees with math-verify on the same answers
    assert build_rewards([RewardSpec("rg_verifier")])[0][1](None, [right, wrong], **cols) == [
        1.0,
        0.0,
    ]


def test_any_reasoning_gym_dataset_by_name():
    t = load_task(spec("rg:leg_counting", seed=3))
    assert t.rewards[-1].name == "rg_verifier"
    (_, fn, _) = build_rewards(t.rewards)[-1]
    row = t.train[0]
    assert fn(
        None, [f"<answer>{row['answer']}</answer>", "<answer>-1</answer>"], rg_entry=[row["rg_entry"]] * 2
    ) == [
        1.0,
        0.0,
    ]
    t2 = load_task(spec("rg:chain_sum,max_terms=2", seed=3))
    assert all(
        r["prompt"].count(" + ") + r["prompt"].count(" - ") <= 1 for r in t2.train
    )  # the setting applied


def test_reasoning_gym_errors_list_valid_names_and_settings():
    with pytest.raises(
        TaskError,
        match="unknown reasoning-gym dataset 'leg_count'.*did you mean leg_counting.*basic_arithmetic",
    ):
        load_task(spec("rg:leg_count"))
    with pytest.raises(TaskError, match="rg:chain_sum.*unexpected keyword.*its settings are.*max_terms"):
        load_task(spec("rg:chain_sum,colour=red"))
    with pytest.raises(TaskError, match="missing what follows 'rg:'"):
        load_task(spec("rg:"))


def test_unknown_task_and_chat_messages():
    with pytest.raises(TaskError, match="unknown task 'poetry'.*concise.*file:<path>"):
        load_task(spec("poetry"))
    assert chat_messages({"prompt": "Hi"}, "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert chat_messages({"prompt": "Hi"}, "") == [{"role": "user", "content": "Hi"}]
    own = [{"role": "system", "content": "Pirate."}, {"role": "user", "content": "Hi"}]
    assert chat_messages({"prompt": own}, "Be brief.") == own  # the row's own system prompt is kept


# --- your own data ------------------------------------------------------------------------------------------------

ROWS = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(12)]


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_upload_formats_load_with_reference_columns(tmp_path, ext):
    t = load_task(spec(f"file:{write(tmp_path / ('data' + ext), ROWS)}", train_size=8, eval_size=4))
    assert isinstance(t, Task) and (len(t.train), len(t.eval)) == (8, 4)
    got = {r["prompt"]: r["answer"] for r in t.train + t.eval}
    assert got == {r["prompt"]: r["answer"] for r in ROWS}  # answers travel as text, "0" stays "0"
    assert t.rewards[0].name == "math_correct"  # numeric answers -> math correctness suggested


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_upload_chat_message_prompts(tmp_path, ext):
    rows = [
        {
            "prompt": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": f"Capital no. {i}? ✓"},
            ]
        }
        for i in range(6)
    ]
    t = load_task(spec(f"file:{write(tmp_path / ('chat' + ext), rows)}", train_size=4, eval_size=2))
    msgs = chat_messages(t.train[0], "ignored: the row has its own system prompt")
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[1]["content"].endswith("✓")
    assert t.rewards[0].name == "length"  # no reference column -> the length reward


def test_upload_csv_cell_with_json_messages(tmp_path):
    # A spreadsheet cannot hold a list: chat messages written as JSON text in a CSV cell are read as messages.
    msgs = [[{"role": "user", "content": f"Hello {i}"}] for i in range(6)]
    f = write(tmp_path / "chat.csv", [{"prompt": json.dumps(m)} for m in msgs])
    t = load_task(spec(f"file:{f}", train_size=4, eval_size=2))
    assert sorted(t.train + t.eval, key=str) == sorted([{"prompt": m} for m in msgs], key=str)


def fails(tmp_path: Path, name: str, content: bytes | list[dict], match: str, limits: Limits | None = None):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write(path, content)
    with pytest.raises(TaskError, match=match):
        load_task(spec(f"file:{path}", train_size=4, eval_size=2, prompts_per_step=2), limits)


def test_upload_missing_prompt_column(tmp_path):
    fails(
        tmp_path,
        "q.csv",
        [{"question": "hi", "answer": "x"}] * 5,
        r"no 'prompt' column \(columns: question, answer\)",
    )


def test_upload_empty_prompt_names_the_row(tmp_path):
    rows = ROWS[:6] + [{"prompt": "   ", "answer": "1"}] + ROWS[6:]
    fails(tmp_path, "e.csv", rows, r"e.csv row 7 \(header not counted\): the prompt is empty")
    rows = ROWS[:2] + [{"prompt": None, "answer": "1"}] + ROWS[2:]
    fails(tmp_path, "e.parquet", rows, "e.parquet row 3: the prompt is empty")


def test_upload_non_text_prompt_names_the_line(tmp_path):
    rows = ROWS[:4] + [{"prompt": 42, "answer": "1"}] + ROWS[4:]
    fails(tmp_path, "n.jsonl", rows, r"n.jsonl line 5: the prompt is a number \('42'\), not text")
    bad_chat = ROWS[:3] + [{"prompt": [{"role": "bot", "content": "x"}]}]
    fails(tmp_path, "c.jsonl", bad_chat, "c.jsonl line 4: message 1 of the prompt must be like")
    ends_with_assistant = [
        {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    ]
    fails(
        tmp_path, "a.jsonl", ROWS[:3] + ends_with_assistant, "line 4: the last message of the prompt must be"
    )


def test_upload_wrong_encoding_names_the_line(tmp_path):
    text = "prompt,answer\nWhat is 1+1?,2\nWho wrote Les Misérables?,Hugo\n"
    fails(tmp_path, "latin.csv", text.encode("latin-1"), "latin.csv is not UTF-8 text: byte 0xe9 on line 3")
    fails(tmp_path, "u16.jsonl", '{"prompt": "hi"}\n'.encode("utf-16"), "not UTF-8 text: byte 0xff on line 1")
    # a UTF-8 file with a byte-order mark (as Excel writes) is fine
    (tmp_path / "bom.csv").write_bytes(
        ("\ufeff" + "prompt\n" + "".join(f"q{i} é\n" for i in range(6))).encode()
    )
    t = load_task(spec(f"file:{tmp_path / 'bom.csv'}", train_size=4, eval_size=2))
    assert len(t.train) == 4 and t.train[0]["prompt"].endswith(
        " é"
    )  # the BOM is not read into the column name


def test_upload_oversized_file(tmp_path):
    fails(
        tmp_path,
        "big.jsonl",
        ROWS,
        r"big.jsonl is 0.0 MB, above the upload limit of 0.0001 MB",
        Limits(max_upload_mb=0.0001),
    )


def test_upload_too_few_rows(tmp_path):
    fails(tmp_path, "few.csv", ROWS[:3], "few.csv has 3 distinct prompt.*at least 4 are needed")
    # duplicates do not count: they could land in train and eval both
    fails(tmp_path, "dup.csv", [ROWS[0]] * 6, "has 1 distinct prompt")
    # enough rows, but not enough left to train on for prompts_per_step=4
    path = write(tmp_path / "five.csv", ROWS[:5])
    with pytest.raises(TaskError, match="leaves 3 training prompt.*prompts_per_step=4"):
        load_task(spec(f"file:{path}", train_size=8, eval_size=2, prompts_per_step=4))


def test_upload_broken_files(tmp_path):
    fails(
        tmp_path, "bad.jsonl", b'{"prompt": "a"}\n{"prompt": "b",}\n', r"bad.jsonl line 2 is not valid JSON"
    )
    fails(tmp_path, "arr.jsonl", b'{"prompt": "a"}\n["b"]\n', "arr.jsonl line 2 must be a JSON object")
    fails(tmp_path, "bad.parquet", b"not parquet at all", "not a readable Parquet file")
    fails(tmp_path, "bad.csv", b'prompt,answer\n"unclosed,1\n', "not valid CSV")
    fails(tmp_path, "empty.csv", b"", "empty.csv is empty")
    fails(tmp_path, "header.csv", b"prompt,answer\n", "no rows")
    fails(tmp_path, "data.xlsx", b"x", r"unsupported file type .xlsx; use .csv, .jsonl or .parquet")
    with pytest.raises(TaskError, match="no file at"):
        load_task(spec(f"file:{tmp_path / 'missing.csv'}"))


def test_hub_offline_is_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskError, match="could not load hub dataset 'openai/gsm8k'.*file:<path>"):
        load_task(spec("hub:openai/gsm8k:main"))
