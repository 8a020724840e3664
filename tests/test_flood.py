"""A flood of hostile requests against the app running as a Space, while another visitor keeps getting answers.

The app runs in its own process (`python app.py` with SPACE_ID set), as it does on a Space: a request that held the
GIL or hung a thread there would show up here as a slow answer to the other client. Every hostile input of issue 12
is sent through the API, the private events (task dropdown, upload box) too, by their fn_index as a browser does.

    pytest tests/test_flood.py -m slow -q -s        # prints the probe's latencies
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from workbench.config import RunSpec
from workbench.store import create_run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
EVIL_REGEX = r"(.|..)*(?=\x01)"  # exponential backtracking on any text without \x01
HANG_TASK = (
    "rg:basic_arithmetic,max_digits=12,max_terms=12"  # reasoning-gym loops for hours on these settings
)
FLOOD_S = 40.0


def _events(base: str) -> dict[tuple[str, str], int]:
    """(elem_id, trigger) -> fn_index of every event, read from the page's config as the browser reads it."""
    cfg = httpx.get(f"{base}config", timeout=30).json()
    elem = {c["id"]: c.get("props", {}).get("elem_id") for c in cfg["components"]}
    out = {}
    for dep in cfg["dependencies"]:
        for target, trigger in dep.get("targets", []):
            out[(elem.get(target), trigger)] = dep["id"]
    return out


def call_event(base: str, fn_index: int, data: list, timeout: float = 120) -> dict:
    """One event through the queue, as the browser sends it: join, then read the stream until it completes."""
    session = uuid.uuid4().hex[:10]
    body = {
        "data": data,
        "fn_index": fn_index,
        "session_hash": session,
        "event_data": None,
        "trigger_id": None,
    }
    with httpx.Client(timeout=timeout) as http:
        http.post(f"{base}gradio_api/queue/join", json=body).raise_for_status()
        with http.stream("GET", f"{base}gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg.get("msg") == "process_completed":
                        return msg
    raise AssertionError("the stream ended without a result")


def upload(base: str, path: Path) -> dict:
    with path.open("rb") as f:
        r = httpx.post(f"{base}gradio_api/upload", files={"files": (path.name, f)}, timeout=60)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture
def space(tmp_path, free_port):
    """The app as a Space on a free port, with an evil run (a catastrophic regex reward) ready to compare."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from peft import LoraConfig, get_peft_model

    from workbench.models import load_model

    home = Path(os.environ["WORKBENCH_HOME"])
    run = create_run(RunSpec(model="tiny-random", task="concise", max_steps=1, eval_size=8, max_completion_length=16,
                             dtype="float32", device="cpu", rewards=[f"regex:1,pattern={EVIL_REGEX}"]),
                     status="finished")  # fmt: skip
    model, _ = load_model("tiny-random", dtype="float32", device="cpu")
    torch.manual_seed(1)
    tmp = run.adapter_tmp_dir()
    get_peft_model(
        model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    ).save_pretrained(tmp)
    run.commit_adapter(tmp)
    files = tmp_path / "files"
    files.mkdir()
    pq.write_table(pa.table({"prompt": ["hi"] * 1_000_000}), files / "many.parquet", compression="zstd")
    (files / "lines.csv").write_text("prompt\n" + "a\n" * 2_000_000)  # 4 MB, two million rows
    secret = tmp_path / "cwd" / "org" / "data"  # an id-shaped folder in the server's working folder
    secret.mkdir(parents=True)
    (secret / "secret.csv").write_text("prompt,answer\n" + "".join(f"SECRET {i},{i}\n" for i in range(8)))
    # no standby worker: it would fetch the Space's hub model, and the hub is offline here
    env = dict(os.environ, SPACE_ID="test/flood", GRADIO_SERVER_PORT=str(free_port), WORKBENCH_HOME=str(home),
               WORKBENCH_TASK_TIMEOUT_S="5", WORKBENCH_COMPARE_TIMEOUT_S="90", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT),
               WORKBENCH_STANDBY_WORKER="0")  # fmt: skip
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=tmp_path / "cwd", env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{free_port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}config", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError("the app did not come up: " + (tmp_path / "server.log").read_text()[-2000:])
    yield base, run.id, files
    os.killpg(proc.pid, 9)  # the server, its forkserver and its sandbox children
    proc.wait()
    for r in (home / "runs").glob("2*"):  # workers are in their own sessions: end the ones this test started
        st = json.loads((r / "status.json").read_text()) if (r / "status.json").exists() else {}
        if st.get("pid") and st.get("state") == "running":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(st["pid"], 9)


def test_hostile_requests_never_slow_another_visitor(space):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    base, evil_run, files = space
    events = _events(base)
    on_task, on_upload = events[("wb-field-task", "input")], events[("wb-upload", "upload")]
    stop = threading.Event()
    outcomes: dict[str, list] = {}
    lock = threading.Lock()

    def note(kind: str, value) -> None:
        with lock:
            outcomes.setdefault(kind, []).append(value)

    def hammer(kind: str, fn) -> None:
        while not stop.is_set():
            try:
                note(kind, fn())
            except AppError as e:
                note(kind, f"refused: {e}")
            except Exception as e:  # a transport error is a finding too: keep it for the assertion message
                note(kind, f"{type(e).__name__}: {e}")

    def task_dropdown():
        msg = call_event(base, on_task, [HANG_TASK, 7])  # seed 7: its 4-prompt sample hangs too
        return f"refused: {msg['output'].get('error')}" if not msg.get("success", True) else "answered"

    def hostile_upload(name: str):
        def go():
            msg = call_event(base, on_upload, [upload(base, files / name), 256, 24, 0])
            return json.dumps(msg["output"].get("data"))[:300]

        return go

    hostile_launches = [
        dict(task="hub:org/data"),  # an id-shaped folder in the server's working folder
        dict(task="file:/etc/passwd"),
        dict(model="./org/model"),
        dict(model="meta-llama/Llama-3.1-70B-Instruct"),  # sized from the hub first (offline here: refused)
        dict(num_generations=64, prompts_per_step=64),
        dict(max_prompt_length=8192),
        dict(use_lora=False),
        dict(rewards=["regex"], regex__pattern="(("),
        dict(rewards=["length"], length__target=0),
        dict(task=HANG_TASK),  # accepted (within the caps); its worker gives up after the task time limit
        dict(
            rewards=["regex"], regex__pattern=EVIL_REGEX, max_steps=2
        ),  # accepted; its steps score 0 in time
        dict(task="concise"),  # refused: the two above are this visitor's share
    ]

    def launches():
        client = Client(base, verbose=False)
        out = []
        for kw in hostile_launches:
            try:
                client.predict(model=kw.pop("model", "tiny-random"), **kw, api_name="/launch")
                out.append("accepted")
            except AppError as e:
                out.append(f"refused: {e}")
            except Exception as e:
                out.append(f"{type(e).__name__}: {e}")
        note("launch", out)
        stop.wait()

    def compares():
        client = Client(base, verbose=False)
        for tokens in (100_000, 16):  # over the cap, then a real comparison scored by the evil regex
            try:
                headline = client.predict(evil_run, "held-out prompts", 8, "", "", "greedy", 0, tokens,
                                          api_name="/compare")[0]  # fmt: skip
                note("compare", f"answered: {headline[:80]}")
            except Exception as e:
                note("compare", f"refused: {type(e).__name__}: {e}")

    probe = Client(base, verbose=False)
    probe.predict(evil_run, api_name="/run_status")  # connected before the flood
    threads = [threading.Thread(target=hammer, args=("task", task_dropdown)) for _ in range(3)]
    threads += [
        threading.Thread(target=hammer, args=(n, hostile_upload(n))) for n in ("many.parquet", "lines.csv")
    ]
    threads += [threading.Thread(target=launches), threading.Thread(target=compares)]
    for t in threads:
        t.daemon = True
        t.start()
    latencies = []
    t_end = time.monotonic() + FLOOD_S
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        st = probe.predict(evil_run, api_name="/run_status")
        latencies.append(time.monotonic() - t0)
        assert st["state"] == "finished"
        time.sleep(0.2)
    stop.set()
    # every hammer ends after its call in flight (a 2M-row upload may still be counting); the comparison may still
    # be waiting for a free sandbox slot: let them all finish
    deadline = time.monotonic() + 240
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    latencies.sort()
    print(f"\nprobe: {len(latencies)} answers, median {latencies[len(latencies) // 2]:.3f}s, "
          f"max {latencies[-1]:.3f}s")  # fmt: skip
    for kind, values in outcomes.items():
        print(f"{kind}: {len(values)} x, e.g. {str(values[0])[:200]}")
    assert latencies[-1] < 2.0, latencies[-5:]

    launch = outcomes["launch"][0]
    assert [x == "accepted" for x in launch] == [False] * 9 + [True, True, False], launch
    assert "WORKBENCH_MAX_RUNS_PER_VISITOR" in launch[-1]
    assert all("SECRET" not in str(v) for vs in outcomes.values() for v in vs)
    assert outcomes["task"] and all("WORKBENCH_TASK_TIMEOUT_S" in v for v in outcomes["task"]), outcomes[
        "task"
    ][:3]
    for name in ("many.parquet", "lines.csv"):
        assert outcomes[name] and all("WORKBENCH_MAX_UPLOAD_ROWS" in v for v in outcomes[name]), outcomes[
            name
        ][:2]
    compare = outcomes["compare"]
    assert "WORKBENCH_MAX_COMPARE_TOKENS" in compare[0] and compare[1].startswith("answered"), compare
