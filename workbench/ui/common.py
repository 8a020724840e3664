"""What every tab shares: turning errors into messages a visitor can act on, the theme, and the page CSS.

Callbacks never show a traceback. `guarded(n)` wraps a callback: an exception becomes a gr.Error whose text says what
to change (the workbench's own errors are written that way). The browser shows it as a toast and leaves the outputs as
they were; an API client (gradio_client) gets it raised, not an empty result. The traceback goes to the server log
only. `guarded(n, quiet=True)` (timers, tab refreshes) skips the outputs silently instead.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from ..errors import UploadError, UserError

__all__ = ["CSS", "UploadError", "guarded", "skips", "theme", "user_message"]

log = logging.getLogger("workbench.ui")


def user_message(e: BaseException) -> str:
    """One line for the visitor: our own errors as written, anything else with its type and a way forward."""
    text = str(e).strip() or type(e).__name__
    if isinstance(e, (UserError, PermissionError)):  # PermissionError: access.py words it for the visitor
        return text
    first = text.splitlines()[0][:300]
    return (
        f"Something went wrong ({type(e).__name__}: {first}). Try again; if it repeats, check the server log."
    )


def skips(n: int) -> Any:
    """gr.skip() for each of n outputs (a single value when n == 1)."""
    return gr.skip() if n == 1 else tuple(gr.skip() for _ in range(n))


def guarded(n_outputs: int, quiet: bool = False) -> Callable:
    """Decorator: on an exception, raise gr.Error with the visitor's message (unless quiet: timers must not toast
    every second; they skip the outputs)."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:  # the one place a callback's error is caught: reworded, never a traceback
                log.warning("callback %s failed", fn.__name__, exc_info=True)
                if not quiet:
                    raise gr.Error(user_message(e), print_exception=False) from None
                return skips(n_outputs)

        return inner

    return wrap


def theme() -> gr.themes.Base:
    # System fonts only: a Space or an offline laptop must not wait on a font CDN.
    return gr.themes.Soft(
        primary_hue="indigo",
        secondary_hue="slate",
        neutral_hue="slate",
        radius_size="md",
        font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


CSS = """
.wb-header { display:flex; align-items:baseline; gap:14px; flex-wrap:wrap; margin:4px 0 2px 0; }
.wb-header h1 { font-size:1.55rem; margin:0; font-weight:700; letter-spacing:-0.01em; }
.wb-header .wb-sub { color:var(--body-text-color-subdued); font-size:0.95rem; }
.wb-chips { display:flex; gap:6px; flex-wrap:wrap; margin:0 0 6px 0; }
.wb-chip { font-size:0.78rem; padding:2px 8px; border-radius:999px; background:var(--background-fill-secondary);
  border:1px solid var(--border-color-primary); color:var(--body-text-color-subdued); }
.wb-status { border:1px solid var(--border-color-primary); border-radius:10px; padding:12px 14px;
  background:var(--background-fill-primary); }
.wb-status-top { display:flex; gap:10px; align-items:center; flex-wrap:wrap; }
.wb-runid { font-family:var(--font-mono); font-size:0.85rem; color:var(--body-text-color-subdued); }
.wb-what { font-size:0.85rem; color:var(--body-text-color-subdued); }
.wb-badge { font-size:0.75rem; font-weight:700; text-transform:uppercase; letter-spacing:0.04em; padding:2px 9px;
  border-radius:999px; background:#e5e7eb; color:#374151; }
.wb-badge-running { background:#dcfce7; color:#166534; }
.wb-badge-queued { background:#fef3c7; color:#92400e; }
.wb-badge-finished { background:#e0e7ff; color:#3730a3; }
.wb-badge-stopped { background:#e5e7eb; color:#374151; }
.wb-badge-failed, .wb-badge-interrupted { background:#fee2e2; color:#991b1b; }
.wb-progress { height:8px; background:var(--background-fill-secondary); border-radius:999px; margin:10px 0 8px 0;
  overflow:hidden; }
.wb-progress > div { height:100%; background:linear-gradient(90deg,#6366f1,#4f46e5); border-radius:999px;
  transition:width .6s ease; }
.wb-stats { display:flex; gap:22px; flex-wrap:wrap; font-size:0.92rem; }
.wb-up { color:#059669; font-size:0.8rem; } .wb-down { color:#dc2626; font-size:0.8rem; }
.wb-reason { margin-top:8px; font-size:0.88rem; color:var(--body-text-color-subdued); }
.wb-failed .wb-reason, .wb-interrupted .wb-reason { color:#b91c1c; }
.wb-warnings { border:1px solid #fcd34d; background:#fffbeb; color:#78350f; border-radius:10px; padding:8px 14px; }
.wb-warnings-title { font-weight:700; font-size:0.85rem; text-transform:uppercase; letter-spacing:0.04em; }
.wb-warnings ul { margin:4px 0 2px 18px; padding:0; font-size:0.9rem; }
.wb-groups-title { font-size:0.88rem; color:var(--body-text-color-subdued); margin:2px 0 8px 0; }
.wb-group { border:1px solid var(--border-color-primary); border-radius:10px; margin-bottom:10px; overflow:hidden; }
.wb-group > summary { cursor:pointer; padding:8px 12px; background:var(--background-fill-secondary);
  display:flex; gap:10px; align-items:baseline; flex-wrap:wrap; }
.wb-tag { font-size:0.72rem; font-weight:700; text-transform:uppercase; color:#4f46e5; white-space:nowrap; }
.wb-prompt { font-weight:600; flex:1 1 300px; white-space:pre-wrap; }
.wb-gstats { font-size:0.8rem; color:var(--body-text-color-subdued); white-space:nowrap; }
.wb-flag { font-size:0.7rem; font-weight:700; padding:1px 6px; border-radius:6px; background:#fee2e2; color:#991b1b;
  margin-left:4px; white-space:nowrap; }
table.wb-table { width:100%; border-collapse:collapse; font-size:0.86rem; border:none !important; margin:0; }
table.wb-table thead, table.wb-table tbody, table.wb-table tr { border:none !important; }
table.wb-table th, table.wb-table td { border:none !important;
  border-bottom:1px solid var(--border-color-primary) !important; }
table.wb-table th { text-align:left; font-weight:600; font-size:0.76rem; color:var(--body-text-color-subdued);
  padding:5px 8px; border-bottom:1px solid var(--border-color-primary); }
table.wb-table td { padding:6px 8px; border-bottom:1px solid var(--border-color-primary); vertical-align:top; }
td.wb-completion { white-space:pre-wrap; word-break:break-word; width:60%; }
td.wb-num, th.wb-num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
.wb-empty { color:var(--body-text-color-subdued); font-size:0.9rem; padding:14px; text-align:center;
  border:1px dashed var(--border-color-primary); border-radius:10px; }
.wb-pair { display:grid; grid-template-columns:1fr 1fr; gap:10px; margin:4px 0 14px 0; }
.wb-answer { border:1px solid var(--border-color-primary); border-radius:10px; padding:8px 12px; }
.wb-answer.wb-win { border-color:#059669; box-shadow:0 0 0 1px #059669 inset; }
.wb-answer h4 { margin:0 0 4px 0; font-size:0.78rem; text-transform:uppercase; letter-spacing:0.05em;
  color:var(--body-text-color-subdued); }
.wb-answer pre { white-space:pre-wrap; word-break:break-word; font-family:inherit; margin:0 0 6px 0; }
.wb-scores { display:flex; gap:6px; flex-wrap:wrap; }
.wb-score { font-size:0.75rem; padding:1px 7px; border-radius:6px; background:var(--background-fill-secondary); }
.wb-score.wb-check { border:1px dashed var(--border-color-primary); }
.wb-answer.wb-bad { border-color:#dc2626; box-shadow:0 0 0 1px #dc2626 inset; }
.wb-degenerate { text-transform:none; letter-spacing:0; color:#dc2626; font-weight:600; margin-left:6px; }
.wb-qprompt { font-weight:600; margin-top:6px; white-space:pre-wrap; }
.wb-learn-formula { font-size:1.05rem; padding:6px 10px; background:var(--background-fill-secondary);
  border-radius:8px; display:inline-block; font-family:var(--font-mono); }
#wb-launch { min-height:44px; }
"""
