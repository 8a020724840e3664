"""GRPO Workbench web app: train a small model with GRPO, watch it learn live, compare it with the base model.

    python app.py                         # http://127.0.0.1:7860 (GRADIO_SERVER_PORT to change the port)

On a Hugging Face Space (SPACE_ID set) it listens on 0.0.0.0 and defaults to the hub copy of SmolLM2-135M-Instruct.
Limits for a shared deployment come from the environment (one table in workbench/limits.py, listed in the README;
on a Space an unset one takes its Space default). Runs are kept under $WORKBENCH_HOME.
"""

from __future__ import annotations

import logging

from workbench.ui import build_app, launch_options
from workbench.ui.build import start_server_housekeeping
from workbench.ui.settings import deployment_limits


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = deployment_limits()
    # runs whose worker died with a previous server read as interrupted; a thread keeps the queue and disk in check
    start_server_housekeeping(limits)
    demo = build_app(limits)
    # The event queue bounds how many requests wait at once; training itself runs in worker processes.
    demo.queue(max_size=64, default_concurrency_limit=4).launch(**launch_options(limits))


if __name__ == "__main__":
    main()
