"""Visitor input that could touch the file system: uploaded datasets and settings that name paths.

An upload is copied to `$WORKBENCH_HOME/uploads/<random>.<ext>`: the name the visitor chose is never used as a
path, only its extension (from a fixed list). On a Space, a run spec may name files only inside that folder, and
models or reward tokenizers only by hub id or bundled name, never by a local path; locally the owner of the
machine may point at their own files.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from ..config import BUNDLED, TINY_MODEL, Limits, RunSpec, workbench_home
from ..housekeeping import prune_uploads
from ..limits import reads_server_file
from ..tasks.files import FORMATS
from .common import UploadError
from .settings import default_model, on_space

EXTENSIONS = tuple(FORMATS)  # exactly what tasks.load_file reads
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PATH_PARAMS = ("model", "tokenizer")  # reward parameters that name something to load


def upload_note() -> str:
    """What the upload box says: the format, and on a Space that an upload is as public as the runs made from it."""
    note = "A file needs a `prompt` column; other columns (e.g. `answer`) are passed to the rewards."
    if on_space():
        note += (" **On this shared Space an upload is effectively public:** any visitor can train on it, its path "
                 "shows in the run's config, and Compare's CSV carries its reference columns. Upload nothing private.")  # fmt: skip
    return note


def uploads_dir() -> Path:
    return workbench_home() / "uploads"


def save_upload(src: str | os.PathLike, original_name: str, limits: Limits) -> Path:
    """Copy an uploaded file into the uploads folder under a random name; refuse wrong types and sizes."""
    ext = Path(original_name or "").suffix.lower()
    if ext not in EXTENSIONS:
        raise UploadError(
            f"{Path(original_name).name or 'the file'} is not a dataset file: upload a {', '.join(EXTENSIONS)} "
            "file with a 'prompt' column (and reference columns such as 'answer')"
        )
    size_mb = os.path.getsize(src) / 1e6
    if size_mb > limits.max_upload_mb:
        raise UploadError(
            f"the file is {size_mb:.1f} MB, above this server's limit of {limits.max_upload_mb:g} MB: upload fewer "
            "rows (the server's owner can raise the limit with WORKBENCH_MAX_UPLOAD_MB)"
        )
    folder = uploads_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{secrets.token_hex(8)}{ext}"
    tmp = folder / f".{dest.name}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    prune_uploads(folder, limits, keep=dest)  # by age, count and size: a public Space must not fill its disk
    return dest


def is_upload(path: str) -> bool:
    """True when `path` is a file inside the uploads folder (after resolving links and '..')."""
    try:
        p = Path(path).resolve()
        return p.is_file() and p.parent == uploads_dir().resolve()
    except OSError:
        return False


def _looks_like_path(value: str) -> bool:
    v = value.strip()
    return reads_server_file(v) or (":" in v and not v.startswith("hub:"))


def hub_id_ok(value: str) -> bool:
    """An `org/name` hub id that is not also a path on this server (from_pretrained would read that first)."""
    return bool(HUB_ID.match(value)) and not _looks_like_path(value)


def check_visitor_paths(spec: RunSpec) -> None:
    """On a Space, refuse settings that would read server files. Raises PermissionError saying what to use."""
    task = spec.task.strip()
    if task.startswith("file:") and not is_upload(task[5:].strip()) and (on_space() or not task[5:].strip()):
        raise PermissionError(
            "the task names a file on the server: upload your dataset with the Upload box instead (it sets the task "
            "for you)"
        )
    if not on_space():
        return
    if task.startswith("hub:"):
        dataset = task[4:].strip().partition("@")[0].partition(":")[0]
        if not hub_id_ok(dataset):
            raise PermissionError(
                f"task {task!r} is not a hub dataset id: on this Space use hub:<org>/<name>[:<config>][@<split>], "
                "e.g. hub:openai/gsm8k:main, or upload a file"
            )
    model = spec.model.strip()
    if model not in (default_model(), TINY_MODEL) and not hub_id_ok(model):
        raise PermissionError(
            f"model {model!r} is not a hub id: on this Space use a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct"
        )
    for r in spec.rewards:
        for key in PATH_PARAMS:
            v = str(r.params.get(key, "") or "").strip()
            if v and v not in BUNDLED and not hub_id_ok(v):
                raise PermissionError(
                    f"reward {r.name}: {key}={v!r} is not a hub id; on this Space use a hub id (org/name) or leave "
                    "it empty"
                )
