"""The Gradio UI (the only floor that imports gradio): one module per tab, pure view functions underneath.

from workbench.ui import build_app, launch_options
"""

from .build import build_app, launch_options

__all__ = ["build_app", "launch_options"]
