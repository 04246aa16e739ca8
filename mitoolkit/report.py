"""The comparison's figures and its self-contained HTML report (plotly, imported only here and lazily).

* :func:`convergence_figure`: the held-out estimate against the training step, one curve per method
  (the mean over seeds) with a band (mean +- one standard deviation over the seeds still running
  at that step), and the ceilings ln N (or ln K) and ln n_test drawn as horizontal lines;
* :func:`estimates_figure`: the final estimates per method, a box with every seed's point (the
  analogue of the seed paper's Figure 1);
* :func:`seconds_figure`: seconds per estimate, per method;
* :func:`write_report`: all of them, the summary table and the settings in one HTML file that embeds
  plotly.js, so it opens offline.

plotly is an optional dependency (the ``notebooks`` extra): ``pip install "mitoolkit[notebooks]"``.
"""
from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mitoolkit.comparison import METHOD_LABELS, Comparison, write_atomic
from mitoolkit.results import FLAG_NAMES

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = [
    "METHOD_COLORS",
    "convergence_figure",
    "estimates_figure",
    "require_plotly",
    "seconds_figure",
    "write_report",
]

#: One colour per method, the same in every figure.
METHOD_COLORS: dict[str, str] = {
    "none": "#7f7f7f",
    "pca": "#1f77b4",
    "cnn": "#d62728",
    "gap": "#2ca02c",
}


def require_plotly() -> Any:
    """Import plotly, or say how to install it."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ImportError(
            "the HTML report and the comparison figures need plotly, which is not installed: "
            'pip install "mitoolkit[notebooks]" (or pip install plotly), or pass report=False '
            "(--no-report) to write only results.json and results.csv."
        ) from None
    return go


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _color(method: str) -> str:
    return METHOD_COLORS.get(method, "#9467bd")


def convergence_figure(comparison: Comparison, layer: str) -> "go.Figure":
    """Held-out estimate (nats) against the step for each method on ``layer``, band over seeds.

    Traces: per method, one line named by the method's label (the mean over the seeds that reached
    the step) and one band (``"<label> band"``, not in the legend); then the ceilings.
    """
    go = require_plotly()
    fig = go.Figure()
    n_test = []
    for method in comparison.methods:
        rows = comparison.rows_for(layer, method)
        if not rows:
            continue
        n_test += [r.result.n_test for r in rows]
        curves = [dict(zip(r.history.eval_step, r.history.heldout)) for r in rows]
        steps = sorted(set().union(*curves))
        if not steps:
            continue
        values = [[c[s] for c in curves if s in c and math.isfinite(c[s])] for s in steps]
        keep = [i for i, v in enumerate(values) if v]
        steps = [steps[i] for i in keep]
        mean = np.array([np.mean(values[i]) for i in keep])
        std = np.array([np.std(values[i]) if len(values[i]) > 1 else 0.0 for i in keep])
        count = [len(values[i]) for i in keep]
        label, color = METHOD_LABELS.get(method, method), _color(method)
        fig.add_trace(go.Scatter(
            x=steps + steps[::-1], y=list(mean + std) + list((mean - std)[::-1]),
            fill="toself", fillcolor=_rgba(color, 0.18), line={"width": 0}, hoverinfo="skip",
            name=f"{label} band", legendgroup=method, showlegend=False,
        ))
        fig.add_trace(go.Scatter(
            x=steps, y=mean, mode="lines", name=label, legendgroup=method,
            line={"color": color, "width": 2}, customdata=np.stack([std, count], axis=-1),
            hovertemplate=f"{label}<br>step %{{x}}<br>%{{y:.3f}} ± %{{customdata[0]:.3f}} nats"
                          "<br>%{customdata[1]} seeds<extra></extra>",
        ))
    ceiling_name = comparison.config.get("ceiling_name", "ln N")
    fig.add_hline(y=comparison.ceiling, line={"dash": "dash", "color": "black", "width": 1},
                  annotation_text=f"{ceiling_name} = {comparison.ceiling:.2f}",
                  annotation_position="top left")
    if n_test and math.log(min(n_test)) < comparison.ceiling:
        fig.add_hline(y=math.log(min(n_test)), line={"dash": "dot", "color": "#555", "width": 1},
                      annotation_text=f"ln n_test = {math.log(min(n_test)):.2f} (held-out ceiling)",
                      annotation_position="bottom left")
    quantity = "I(X; T)" if comparison.target == "input" else "I(T; Y)"
    fig.update_layout(
        title=f"Convergence on {layer}: held-out {quantity} (mean ± std over seeds)",
        xaxis_title="training step", yaxis_title=f"held-out {quantity} (nats)",
        template="plotly_white", height=420, legend={"orientation": "h", "y": -0.2},
    )
    return fig


def estimates_figure(comparison: Comparison) -> "go.Figure":
    """Final estimates (nats): per method, a box with each seed's point, grouped by layer."""
    go = require_plotly()
    fig = go.Figure()
    for method in comparison.methods:
        rows = [r for layer in comparison.layers for r in comparison.rows_for(layer, method)]
        if not rows:
            continue
        label = METHOD_LABELS.get(method, method)
        fig.add_trace(go.Box(
            x=[r.layer for r in rows], y=[r.mi for r in rows], name=label,
            marker={"color": _color(method)}, boxpoints="all", jitter=0.4, pointpos=0,
            customdata=[[r.seed, r.stderr] for r in rows],
            hovertemplate=f"{label}<br>%{{x}}, seed %{{customdata[0]}}<br>%{{y:.3f}} ± "
                          "%{customdata[1]:.3f} nats<extra></extra>",
        ))
    quantity = "I(X; T)" if comparison.target == "input" else "I(T; Y)"
    n_seeds = len(comparison.config.get("seeds", []))
    fig.update_layout(
        title=f"Final {quantity} per method over {n_seeds} seeds (spread = stability)",
        xaxis_title="layer", yaxis_title=f"{quantity} (nats)", boxmode="group",
        template="plotly_white", height=420,
    )
    return fig


def seconds_figure(comparison: Comparison) -> "go.Figure":
    """Mean seconds per estimate for each method (error bar: std over seeds), grouped by layer."""
    go = require_plotly()
    fig = go.Figure()
    for method in comparison.methods:
        layers, means, stds = [], [], []
        for layer in comparison.layers:
            seconds = [r.seconds for r in comparison.rows_for(layer, method)]
            if seconds:
                layers.append(layer)
                means.append(float(np.mean(seconds)))
                stds.append(float(np.std(seconds, ddof=1)) if len(seconds) > 1 else 0.0)
        if not layers:
            continue
        fig.add_trace(go.Bar(
            x=layers, y=means, error_y={"type": "data", "array": stds}, name=METHOD_LABELS.get(method, method),
            marker={"color": _color(method)},
        ))
    fig.update_layout(title="Seconds per estimate", xaxis_title="layer", yaxis_title="seconds",
                      barmode="group", template="plotly_white", height=380)
    return fig


# --------------------------------------------------------------------------------------------
# The HTML file
# --------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-size: 0.92em; }
.warn { color: #a15c00; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


def write_report(comparison: Comparison, path: str | os.PathLike) -> Path:
    """Write the comparison as one self-contained HTML file (plotly.js embedded; opens offline).

    Parameters
    ----------
    comparison : Comparison
    path : path
        The file to write (atomically), e.g. ``out / "report.html"``.

    Returns
    -------
    Path
    """
    require_plotly()
    import plotly.io as pio

    figures = [convergence_figure(comparison, layer) for layer in comparison.layers
               if any(r.layer == layer for r in comparison.rows)]
    figures += [estimates_figure(comparison), seconds_figure(comparison)]
    parts = [
        pio.to_html(fig, include_plotlyjs=(i == 0), full_html=False, default_width="100%",
                    config={"displaylogo": False})
        for i, fig in enumerate(figures)
    ]
    cfg = comparison.config
    quantity = "I(X; T)" if comparison.target == "input" else "I(T; Y)"
    title = (f"mitoolkit: baseline vs PCA / CNN / GAP-MINE, {quantity} on "
             f"{cfg.get('dataset_description', cfg.get('dataset'))}")
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>{_describe(comparison)}</p>",
    ]
    if not comparison.complete:
        body.append(f"<p class='warn'>Incomplete: {len(comparison.rows)} rows finished. Run the "
                    "same command again to resume.</p>")
    body += ["<h2>Summary</h2>", _summary_html(comparison), _findings_html(comparison),
             "<h2>Figures</h2>", *parts]
    if comparison.skipped:
        body.append("<h2>Skipped</h2><ul>" + "".join(
            f"<li>{html.escape(METHOD_LABELS.get(s['method'], s['method']))} on "
            f"{html.escape(s['layer'])}: {html.escape(s['reason'])}</li>" for s in comparison.skipped
        ) + "</ul>")
    body.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(cfg, indent=1, default=str)) + "</pre>")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(body) + "</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page)
    return path


def _describe(comparison: Comparison) -> str:
    cfg = comparison.config
    model = cfg.get("model", {})
    if model.get("kind") == "reference":
        model_text = (f"the reference CNN trained on {model.get('dataset')} (test accuracy "
                      f"{model.get('test_accuracy') or float('nan'):.1%})")
    else:
        model_text = str(model.get("path") or model.get("class") or "a model")
    side = "the untransformed image" if comparison.target == "input" else "the one-hot label"
    return html.escape(
        f"{cfg.get('n_samples')} images, {len(cfg.get('seeds', []))} seeds, at most "
        f"{cfg.get('max_steps')} steps per estimate, on {cfg.get('device')}; model: {model_text}. "
        f"X is one of the N images, T the layer's activation of a randomly transformed copy "
        f"({cfg.get('transforms')}); the other side of each pair is {side} "
        f"(reducer: {cfg.get('other_side')}), the same for every method. Estimates are held-out "
        "DV bounds in nats; std is the sample standard deviation over seeds (the paper's "
        "stability: lower is more stable)."
    )


def _findings_html(comparison: Comparison) -> str:
    parts = []
    for layer in comparison.layers:
        if not any(r.layer == layer for r in comparison.rows):
            continue
        items = "".join(f"<li>{html.escape(str(f))}</li>" for f in comparison.findings(layer))
        parts.append(f"<p>The seed paper's findings on {html.escape(layer)}:</p><ul>{items}</ul>")
    return "".join(parts)


def _summary_html(comparison: Comparison) -> str:
    ceiling_name = comparison.config.get("ceiling_name", "ln N")
    head = ("<tr><th>layer</th><th>method</th><th>seeds</th><th>mean (nats)</th><th>std</th>"
            f"<th>seconds</th><th>{ceiling_name}</th><th>ln n_test</th><th>flags</th></tr>")
    lines = []
    for s in comparison.summary:
        flags = ", ".join(f"<span title='{html.escape(FLAG_NAMES.get(k, k))}'>{html.escape(k)} "
                          f"{v}/{s.n_seeds}</span>" for k, v in s.n_flagged.items())
        lines.append(
            f"<tr><td>{html.escape(s.layer)}</td><td>{html.escape(s.label)}</td>"
            f"<td class='num'>{s.n_seeds}</td><td class='num'>{s.mean:.3f}</td>"
            f"<td class='num'>{s.std:.3f}</td><td class='num'>{s.mean_seconds:.1f}</td>"
            f"<td class='num'>{s.ceiling:.2f}</td><td class='num'>{s.ceiling_heldout:.2f}</td>"
            f"<td>{flags}</td></tr>"
        )
    return f"<table>{head}{''.join(lines)}</table>"
