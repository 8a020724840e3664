"""Plotly figures from a run's metrics: pure functions, DataFrame in, figure out (no gradio, no store).

Metric names are TRL's (`reward`, `reward_std`, `rewards/<name>/mean`, `completions/mean_length`, `kl`, ...), one
row per step with a `step` column, as `store.Run.metrics_df()` returns them. Every function accepts an empty
DataFrame or missing columns and then draws a placeholder that says what is missing, so a plot never errors
before the first step lands.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# One colour per meaning, used across every figure.
INK = "#1f2937"
PRIMARY = "#4f46e5"  # total reward
BASE = "#94a3b8"  # base model (compare)
TUNED = "#4f46e5"  # tuned model (compare)
GOOD, BAD = "#059669", "#dc2626"
PALETTE = ["#0891b2", "#d97706", "#7c3aed", "#db2777", "#65a30d", "#0d9488", "#ea580c", "#2563eb"]
FONT = "ui-sans-serif, system-ui, -apple-system, Segoe UI, Roboto, sans-serif"


def _layout(fig: go.Figure, title: str, height: int = 300, **extra) -> go.Figure:
    extra.setdefault("hovermode", "x unified")
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 14, "color": INK}},
        template="plotly_white",
        height=height,
        margin={"l": 52, "r": 16, "t": 44, "b": 40},
        font={"family": FONT, "size": 12, "color": INK},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1, "title": None},
        paper_bgcolor="rgba(0,0,0,0)",
        **extra,
    )
    return fig


def placeholder(title: str, message: str, height: int = 300) -> go.Figure:
    """An empty figure with a centred note (before the first step, or when a metric is not logged)."""
    fig = go.Figure()
    fig.add_annotation(
        text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"color": "#6b7280"}
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height)


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and df[col].notna().any()


def _mode(n: int) -> str:
    # markers keep 1-2 points visible; dense runs read better bare
    return "lines+markers" if n <= 40 else "lines"


def reward_names(df: pd.DataFrame) -> list[str]:
    """The reward functions logged in the metrics, in column order (`rewards/<name>/mean`)."""
    return [
        c[len("rewards/") : -len("/mean")]
        for c in df.columns
        if c.startswith("rewards/") and c.endswith("/mean")
    ]


def ema(values: pd.Series, alpha: float = 0.3) -> pd.Series:
    """Exponential moving average that skips missing values (the trend through noisy per-step means)."""
    return values.astype(float).ewm(alpha=alpha, ignore_na=True).mean()


def reward_figure(df: pd.DataFrame, height: int = 320) -> go.Figure:
    """Total reward per step: the mean, a ±1 std band across the step's completions, and its moving average."""
    title = "Total reward"
    if df is None or df.empty or not _has(df, "reward"):
        return placeholder(title, "Waiting for the first step…", height)
    x, mean = df["step"], df["reward"].astype(float)
    std = df["reward_std"].astype(float).fillna(0) if "reward_std" in df else mean * 0
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=x, y=mean + std, mode="lines", line={"width": 0}, hoverinfo="skip", showlegend=False)
    )
    fig.add_trace(
        go.Scatter(
            x=x, y=mean - std, mode="lines", line={"width": 0}, fill="tonexty",
            fillcolor="rgba(79,70,229,0.14)", name="± 1 std", hoverinfo="skip",
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=x, y=mean, mode=_mode(len(df)), name="mean", line={"color": PRIMARY, "width": 2.5},
                   marker={"size": 6})
    )  # fmt: skip
    if len(df) >= 5:
        fig.add_trace(
            go.Scatter(x=x, y=ema(mean), mode="lines", name="trend (EMA)",
                       line={"color": INK, "width": 1.5, "dash": "dot"})
        )  # fmt: skip
    fig.update_xaxes(title_text="step")
    return _layout(fig, title, height)


def reward_functions_figure(df: pd.DataFrame, height: int = 320) -> go.Figure:
    """Each reward function's mean per step (unweighted), one line each."""
    title = "Each reward function (unweighted)"
    names = reward_names(df) if df is not None else []
    if df is None or df.empty or not names:
        return placeholder(title, "Waiting for the first step…", height)
    fig = go.Figure()
    for i, name in enumerate(names):
        fig.add_trace(
            go.Scatter(x=df["step"], y=df[f"rewards/{name}/mean"], mode=_mode(len(df)), name=name,
                       line={"color": PALETTE[i % len(PALETTE)], "width": 2}, marker={"size": 5})
        )  # fmt: skip
    fig.update_xaxes(title_text="step")
    return _layout(fig, title, height)


# (column, panel title) of the diagnostics grid, in reading order.
DIAGNOSTICS = [
    ("completions/mean_length", "Completion length (tokens)"),
    ("completions/clipped_ratio", "Share that hit the length cap"),
    ("kl", "KL to the reference"),
    ("entropy", "Entropy (nats/token)"),
    ("loss", "Loss"),
    ("frac_reward_zero_std", "Groups with zero reward spread"),
    ("step_time", "Step time (s)"),
    ("grad_norm", "Gradient norm"),
]
_TIME_PARTS = [("time/generation", "generation"), ("time/rewards", "rewards"), ("time/training", "training")]
_SHARES = ("completions/clipped_ratio", "frac_reward_zero_std")  # fractions: fixed 0..1 axis


def diagnostics_figure(df: pd.DataFrame, cap: int | None = None, height: int = 470) -> go.Figure:
    """A 2×4 grid: completion length (mean, min–max band, the cap), share cut at the cap, KL, entropy, loss,
    share of groups with zero reward spread, step time split by stage, gradient norm."""
    title = "Training diagnostics"
    if df is None or df.empty:
        return placeholder(title, "Waiting for the first step…", height)
    fig = make_subplots(rows=2, cols=4, subplot_titles=[t for _, t in DIAGNOSTICS], vertical_spacing=0.2,
                        horizontal_spacing=0.06)  # fmt: skip
    x, mode = df["step"], _mode(len(df))
    for i, (col, _) in enumerate(DIAGNOSTICS):
        r, c = i // 4 + 1, i % 4 + 1
        colour = PALETTE[i % len(PALETTE)]
        if col == "step_time" and all(_has(df, k) for k, _ in _TIME_PARTS):
            for j, (k, label) in enumerate(_TIME_PARTS):
                fig.add_trace(go.Bar(x=x, y=df[k], name=label, marker_color=PALETTE[j + 2]), row=r, col=c)
            continue
        if not _has(df, col):
            # In paper coordinates at the panel's centre: plotly.js resolves "x3 domain" of a subplot without traces
            # against the first subplot, which put the note in the wrong panel.
            sub = fig.get_subplot(r, c)
            fig.add_annotation(text="not logged", showarrow=False, xref="paper", yref="paper",
                               x=sum(sub.xaxis.domain) / 2, y=sum(sub.yaxis.domain) / 2,
                               font={"color": "#9ca3af"})  # fmt: skip
            continue
        if col == "completions/mean_length" and _has(df, "completions/max_length"):
            fig.add_trace(go.Scatter(x=x, y=df["completions/max_length"], mode="lines", line={"width": 0},
                                     hoverinfo="skip", showlegend=False), row=r, col=c)  # fmt: skip
            fig.add_trace(go.Scatter(x=x, y=df["completions/min_length"], mode="lines", line={"width": 0},
                                     fill="tonexty", fillcolor="rgba(8,145,178,0.15)", name="min–max length"),
                          row=r, col=c)  # fmt: skip
        fig.add_trace(
            go.Scatter(x=x, y=df[col], mode=mode, name=col, showlegend=False,
                       line={"color": colour, "width": 2}, marker={"size": 4}),
            row=r, col=c,
        )  # fmt: skip
        if col in _SHARES:
            fig.update_yaxes(range=[-0.05, 1.05], tickformat=".0%", row=r, col=c)
    if cap:
        fig.add_hline(y=cap, line={"color": BAD, "width": 1, "dash": "dash"}, row=1, col=1)
    fig.update_layout(barmode="stack")
    fig.update_annotations(font_size=12)
    _layout(fig, title, height)
    fig.update_layout(margin={"t": 74}, legend={"y": 1.07})
    return fig


def overlay_figure(runs: dict[str, pd.DataFrame], metric: str, height: int = 360) -> go.Figure:
    """One metric of several runs on one plot (the Runs tab); `runs` maps a label to that run's metrics."""
    title = f"{metric} by step"
    drawn = {k: df for k, df in runs.items() if df is not None and not df.empty and _has(df, metric)}
    if not drawn:
        return placeholder(title, "Select runs with at least one step to compare their curves", height)
    fig = go.Figure()
    for i, (label, df) in enumerate(drawn.items()):
        fig.add_trace(
            go.Scatter(x=df["step"], y=df[metric], mode=_mode(len(df)), name=label,
                       line={"color": PALETTE[i % len(PALETTE)], "width": 2}, marker={"size": 4})
        )  # fmt: skip
    fig.update_xaxes(title_text="step")
    return _layout(fig, title, height)


def summary_figure(summary: pd.DataFrame, height: int = 340) -> go.Figure:
    """Compare tab: base vs tuned mean per reward (bars) and the tuned − base difference with its CI (whiskers)."""
    title = "Base vs tuned"
    if summary is None or summary.empty:
        return placeholder(title, "Run a comparison to see the summary", height)
    s = summary.reset_index() if "reward" not in summary.columns else summary
    label_col = "reward" if "reward" in s.columns else s.columns[0]
    labels = [str(v) for v in s[label_col]]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Mean score", "Tuned − base (95% CI)"],
                        horizontal_spacing=0.14)  # fmt: skip
    fig.add_trace(go.Bar(x=labels, y=s["base_mean"], name="base", marker_color=BASE), row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=s["tuned_mean"], name="tuned", marker_color=TUNED), row=1, col=1)
    diff = s["diff"].astype(float)
    err_hi = (s["ci_high"].astype(float) - diff) if "ci_high" in s else None
    err_lo = (diff - s["ci_low"].astype(float)) if "ci_low" in s else None
    # A positive difference is good for a reward, bad for a check where lower is better (degenerate answers).
    sign = [
        -1 if b == "lower" else 0 if b == "" else 1 for b in s.get("better", pd.Series(["higher"] * len(s)))
    ]
    colors = [
        BASE if math.isnan(d) or g * d == 0 else GOOD if g * d > 0 else BAD
        for d, g in zip(diff, sign, strict=True)
    ]
    fig.add_trace(
        go.Scatter(
            x=diff, y=labels, mode="markers", name="difference", marker={"color": colors, "size": 11},
            error_x={"type": "data", "array": err_hi, "arrayminus": err_lo, "thickness": 2, "width": 6}
            if err_hi is not None else None,
            showlegend=False,
        ),
        row=1, col=2,
    )  # fmt: skip
    fig.add_vline(x=0, line={"color": "#9ca3af", "width": 1}, row=1, col=2)
    fig.update_layout(barmode="group", hovermode="closest")
    fig.update_annotations(font_size=12)
    _layout(fig, title, height, hovermode="closest")
    fig.update_layout(margin={"t": 74}, legend={"y": 1.12})  # the legend above the panel titles
    return fig


def advantage_figure(rewards: list[float], advantages: list[float], height: int = 300) -> go.Figure:
    """Learn tab: one group's rewards as bars coloured by advantage, with the group mean as a line."""
    title = "One group: reward of each completion, and the group mean"
    if not rewards:
        return placeholder(title, "No group yet", height)
    labels = [f"#{i + 1}" for i in range(len(rewards))]
    finite = [r for r in rewards if math.isfinite(r)] or [0.0]  # a failed reward (NaN) is not in the mean
    mean = sum(finite) / len(finite)
    colors = [GOOD if a > 1e-9 else BAD if a < -1e-9 else BASE for a in advantages]
    fig = go.Figure(
        go.Bar(x=labels, y=rewards, marker_color=colors, text=[f"A = {a:+.2f}" for a in advantages],
               textposition="outside", cliponaxis=False, name="reward",
               hovertemplate="%{x}: reward %{y:.3f}<extra></extra>")
    )  # fmt: skip
    # Room above (and below, for negative rewards) for the "A = ..." labels outside the bars.
    lo, hi = min(0.0, *finite), max(0.0, *finite)
    pad = 0.18 * ((hi - lo) or 1.0)
    fig.update_yaxes(range=[lo - pad if lo < 0 else lo, hi + pad if hi > 0 or lo == 0 else hi])
    fig.add_hline(y=mean, line={"color": INK, "dash": "dash", "width": 1.5}, annotation_text=f"mean {mean:.3f}",
                  annotation_position="top left")  # fmt: skip
    fig.update_xaxes(title_text="completion")
    fig.update_yaxes(title_text="reward")
    return _layout(fig, title, height, hovermode="closest", showlegend=False)


def heldout_figure(df: pd.DataFrame, evals: pd.DataFrame, off: bool = False, height: int = 340) -> go.Figure:
    """Training reward per step against the held-out evaluations: the held-out reward on the same axis, the shares
    of held-out answers that are degenerate and correct on a second (0–100%), naturalness in the hover. A reward
    that climbs while the degenerate share climbs too (or correctness falls) is the picture of reward hacking."""
    title = "Training reward vs held-out checks"
    if off:
        return placeholder(title, "Held-out evaluation is off for this run (eval_every = 0)", height)
    if evals is None or evals.empty or not _has(evals, "eval/reward"):
        return placeholder(
            title, "Waiting for the first held-out evaluation (step 0: the base model)…", height
        )
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if df is not None and not df.empty and _has(df, "reward"):
        fig.add_trace(go.Scatter(x=df["step"], y=df["reward"], mode="lines", name="training reward",
                                 line={"color": PRIMARY, "width": 1.5, "dash": "dot"}, opacity=0.6))  # fmt: skip

    def col(name: str) -> pd.Series:
        return evals[name].astype(float) if name in evals else pd.Series([math.nan] * len(evals))

    x, n = evals["step"], col("eval/prompts")
    nat, deg, cor = col("eval/checks/naturalness"), col("eval/checks/degenerate"), col("eval/checks/correct")
    hover = [
        f"naturalness {a:.2f}<br>degenerate {_of(d, k)}<br>correct {_of(c, k)}"
        if math.isfinite(a) else f"degenerate {_of(d, k)}<br>correct {_of(c, k)}"
        for a, d, c, k in zip(nat, deg, cor, n, strict=True)
    ]  # fmt: skip
    fig.add_trace(go.Scatter(x=x, y=col("eval/reward"), mode="lines+markers", name="held-out reward",
                             line={"color": PRIMARY, "width": 2.5}, marker={"size": 8}, text=hover,
                             hovertemplate="%{y:.3f}<br>%{text}"))  # fmt: skip
    for series, name, colour in ((deg, "held-out degenerate", BAD), (cor, "held-out correct", GOOD)):
        if series.notna().any():
            fig.add_trace(go.Scatter(x=x, y=series, mode="lines+markers", name=name, marker={"size": 7},
                                     line={"color": colour, "width": 2, "dash": "dash"}), secondary_y=True)  # fmt: skip
    fig.update_yaxes(title_text="reward", secondary_y=False)
    fig.update_yaxes(title_text="share of held-out answers", range=[-0.05, 1.05], tickformat=".0%",
                     secondary_y=True, showgrid=False)  # fmt: skip
    fig.update_xaxes(title_text="step")
    return _layout(fig, title, height)


def _of(share: float, n: float) -> str:
    """A share of the held-out answers as a count, "3 of 8" (the share alone when the count is unknown)."""
    if not math.isfinite(share):
        return "–"
    return f"{round(share * n)} of {int(n)}" if math.isfinite(n) and n > 0 else f"{share:.0%}"
