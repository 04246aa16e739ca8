"""The information plane's figures and its self-contained HTML report (plotly, imported lazily).

* :func:`plane_figure`: I(X; T) across, I(T; Y) up, one path per layer through the epochs, markers
  coloured by epoch, error bars from the seeds' intervals, the ceilings ln N and ln K dashed;
* :func:`update_plane_figure`: the same drawing into an existing figure, updated in place as rows
  arrive (what :class:`mitoolkit.widgets.LivePlane` does in a notebook);
* :func:`quantity_figure`: one quantity against the epoch, a line per layer;
* :func:`write_plane_report`: the figures, the DPI check, the summary, the training history and the
  settings in one HTML file that embeds plotly.js, so it opens offline.
"""
from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from mitoolkit.comparison import METHOD_LABELS, write_atomic
from mitoolkit.plane_results import FLAG_TEXT, QUANTITIES, QUANTITY_LABELS, InformationPlane, PlaneRow, \
    summarize_rows

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = ["plane_figure", "quantity_figure", "update_plane_figure", "write_plane_report"]


# --------------------------------------------------------------------------------------------
# Figures and the HTML report (plotly, imported lazily)
# --------------------------------------------------------------------------------------------

_LAYER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf")
_COLORSCALE = "Viridis"


def _figure_layout(fig: Any, title: str | None, height: int) -> None:
    fig.update_layout(
        title=title, height=height, template="plotly_white",
        xaxis_title="I(X; T): information about the input (nats)",
        yaxis_title="I(T; Y): information about the label (nats)",
        legend={"orientation": "h", "y": -0.18}, margin={"l": 60, "r": 20, "t": 50, "b": 60},
    )


def update_plane_figure(
    fig: Any,
    rows: Sequence[PlaneRow],
    *,
    layers: Sequence[str] | None = None,
    max_epoch: int | None = None,
) -> None:
    """Draw ``rows`` in ``fig`` (a ``go.Figure`` or ``FigureWidget``), replacing what it showed.

    One path per layer through the (I(X; T), I(T; Y)) plane: a point per epoch where both
    quantities have rows (the mean over seeds, error bars from :class:`PlaneSummary` ``low`` to
    ``high``), its marker coloured by epoch, a cross where an estimate is above its ceiling; and
    the ceilings ln N (vertical) and ln K (horizontal) as dashed lines. Traces are found again by
    their ``meta`` (``"plane-layer-<name>"``, ``"plane-ceiling-ixt"``...; a FigureWidget
    rewrites ``uid``), so calling this again as rows arrive updates the figure in place (wrap it
    in ``fig.batch_update()`` for a widget).

    Parameters
    ----------
    fig : plotly Figure or FigureWidget
    rows : sequence of PlaneRow
    layers : sequence of str, optional
        Drawing order (shallowest first); default the order the layers appear in ``rows``.
    max_epoch : int, optional
        Top of the colour scale; default the largest epoch in ``rows``.
    """
    go = _plotly()
    layer_list = list(layers) if layers is not None else list(dict.fromkeys(r.layer for r in rows))
    layer_list += [r.layer for r in rows if r.layer not in layer_list]
    layer_list = list(dict.fromkeys(layer_list))
    summaries = {(s.epoch, s.layer, s.quantity): s for s in summarize_rows(rows)}
    top = max_epoch if max_epoch is not None else max((r.epoch for r in rows), default=1)
    top = max(int(top), 1)
    by_meta = {t.meta: t for t in fig.data if isinstance(t.meta, str)}
    lows = [0.0]
    for k, layer in enumerate(layer_list):
        epochs = sorted({e for (e, lay, q) in summaries if lay == layer and q == "ixt"
                         and (e, lay, "ity") in summaries})
        ixt = [summaries[(e, layer, "ixt")] for e in epochs]
        ity = [summaries[(e, layer, "ity")] for e in epochs]
        lows += [s.low for s in ixt + ity if math.isfinite(s.low)]
        flagged = [a.above_ceiling or b.above_ceiling for a, b in zip(ixt, ity)]
        props = dict(
            x=[s.mean for s in ixt], y=[s.mean for s in ity],
            error_x={"type": "data", "symmetric": False, "thickness": 1, "width": 2,
                     "array": [_gap(s.high - s.mean) for s in ixt],
                     "arrayminus": [_gap(s.mean - s.low) for s in ixt]},
            error_y={"type": "data", "symmetric": False, "thickness": 1, "width": 2,
                     "array": [_gap(s.high - s.mean) for s in ity],
                     "arrayminus": [_gap(s.mean - s.low) for s in ity]},
            text=[f"e{e}" if i in (0, len(epochs) - 1) else "" for i, e in enumerate(epochs)],
            customdata=[[e, a.low, a.high, b.low, b.high, "above its ceiling" if f else ""]
                        for e, a, b, f in zip(epochs, ixt, ity, flagged)],
            marker={"color": epochs, "colorscale": _COLORSCALE, "cmin": 0, "cmax": top, "size": 10,
                    "symbol": ["x" if f else "circle" for f in flagged],
                    "line": {"color": _LAYER_COLORS[k % len(_LAYER_COLORS)], "width": 2},
                    "showscale": k == 0,
                    "colorbar": {"title": {"text": "epoch"}, "len": 0.8}},
        )
        uid = f"plane-layer-{layer}"
        if uid in by_meta:
            by_meta[uid].update(**props)
        else:
            fig.add_trace(go.Scatter(
                meta=uid, name=layer, mode="lines+markers+text", textposition="top center",
                line={"color": _LAYER_COLORS[k % len(_LAYER_COLORS)], "width": 2},
                hovertemplate=(f"{layer}, epoch %{{customdata[0]}}<br>I(X; T) %{{x:.3f}} "
                               "[%{customdata[1]:.3f}, %{customdata[2]:.3f}]<br>I(T; Y) %{y:.3f} "
                               "[%{customdata[3]:.3f}, %{customdata[4]:.3f}] nats"
                               "<br>%{customdata[5]}<extra></extra>"),
                **props))
    ceilings = {r.quantity: r.ceiling for r in rows}
    bottom = min(lows) - 0.1
    if "ixt" in ceilings and "ity" in ceilings:
        cx, cy = ceilings["ixt"], ceilings["ity"]
        lines = {
            "plane-ceiling-ixt": ([cx, cx], [bottom, cy], f"ln N = {cx:.2f} (ceiling of I(X; T))"),
            "plane-ceiling-ity": ([bottom, cx], [cy, cy], f"ln K = {cy:.2f} (ceiling of I(T; Y))"),
        }
        n_test = [r.result.n_test for r in rows if r.quantity == "ixt" and r.result.n_test > 0]
        if n_test and math.log(min(n_test)) < cx:
            held = math.log(min(n_test))
            lines["plane-ceiling-heldout"] = ([held, held], [bottom, cy],
                                              f"ln n_test = {held:.2f} (most a held-out estimate certifies)")
        for uid, (x, y, name) in lines.items():
            props = dict(x=x, y=y, name=name)
            if uid in by_meta:
                by_meta[uid].update(**props)
            else:
                dash = "dot" if uid.endswith("heldout") else "dash"
                fig.add_trace(go.Scatter(meta=uid, mode="lines", hoverinfo="name",
                                         line={"color": "#555", "dash": dash, "width": 1}, **props))


def _gap(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _plotly() -> Any:
    from mitoolkit.report import require_plotly

    return require_plotly()


def plane_figure(plane: InformationPlane, *, title: str | None = None, height: int = 560) -> "go.Figure":
    """The information plane: I(X; T) across, I(T; Y) up, one path per layer coloured by epoch.

    See :func:`update_plane_figure` for what is drawn.
    """
    go = _plotly()
    fig = go.Figure()
    cfg = plane.config
    _figure_layout(fig, title or f"Information plane: {', '.join(plane.layers)} on "
                   f"{cfg.get('dataset_description', cfg.get('dataset'))} "
                   f"({METHOD_LABELS.get(cfg.get('reducer'), cfg.get('reducer'))})", height)
    update_plane_figure(fig, plane.rows, layers=plane.layers, max_epoch=cfg.get("epochs"))
    return fig


def quantity_figure(plane: InformationPlane, quantity: str, *, height: int = 400) -> "go.Figure":
    """One quantity (``"ixt"`` or ``"ity"``) against the epoch, a line per layer with error bars,
    and its ceiling (ln N or ln K)."""
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {', '.join(map(repr, QUANTITIES))}; received {quantity!r}.")
    go = _plotly()
    fig = go.Figure()
    for k, layer in enumerate(plane.layers):
        points = [s for s in plane.summary if s.layer == layer and s.quantity == quantity]
        if not points:
            continue
        fig.add_trace(go.Scatter(
            x=[s.epoch for s in points], y=[s.mean for s in points], mode="lines+markers", name=layer,
            line={"color": _LAYER_COLORS[k % len(_LAYER_COLORS)]},
            error_y={"type": "data", "symmetric": False, "array": [_gap(s.high - s.mean) for s in points],
                     "arrayminus": [_gap(s.mean - s.low) for s in points]},
        ))
    label = QUANTITY_LABELS[quantity]
    ceiling = plane.ceilings[quantity]
    name = "ln N" if quantity == "ixt" else "ln K"
    fig.add_hline(y=ceiling, line={"dash": "dash", "color": "black", "width": 1},
                  annotation_text=f"{name} = {ceiling:.2f}", annotation_position="top left")
    fig.update_layout(title=f"{label} by epoch (mean over seeds; bars: the seeds' 95 % intervals)",
                      xaxis_title="epoch", yaxis_title=f"{label} (nats)", template="plotly_white",
                      height=height)
    return fig


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-size: 0.92em; }
.warn { color: #a15c00; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


def write_plane_report(plane: InformationPlane, path: str | os.PathLike) -> Path:
    """Write the plane, the quantities by epoch, the summary, the DPI check and the training
    history as one self-contained HTML file (plotly.js embedded; opens offline), atomically."""
    _plotly()
    import plotly.io as pio

    figures = [plane_figure(plane), quantity_figure(plane, "ixt"), quantity_figure(plane, "ity")]
    parts = [pio.to_html(fig, include_plotlyjs=(i == 0), full_html=False, default_width="100%",
                         config={"displaylogo": False}) for i, fig in enumerate(figures)]
    cfg = plane.config
    title = f"mitoolkit: information plane on {cfg.get('dataset_description', cfg.get('dataset'))}"
    reducer = METHOD_LABELS.get(cfg.get("reducer"), cfg.get("reducer"))
    model = cfg.get("model", {})
    model_text = ("the reference CNN" if model.get("kind") == "reference" else model.get("class", "a model"))
    describe = (
        f"{model_text} trained for {cfg.get('epochs')} epochs (seed {cfg.get('train_seed')}), measured "
        f"after epochs {cfg.get('epochs_to_measure')} on {cfg.get('n_samples')} training images; "
        f"{len(cfg.get('seeds', []))} seeds per estimate, at most {cfg.get('max_steps')} steps, "
        f"reducer {reducer} on the activation (per layer: {cfg.get('reducers')}). X is one of the N "
        f"images, T the layer's activation of a randomly transformed copy ({cfg.get('transforms')}, "
        "drawn once, the same at every epoch), Y the label. Estimates are held-out MINE bounds in "
        f"nats; the ceilings are ln N = {plane.ceilings['ixt']:.2f} and ln K = "
        f"{plane.ceilings['ity']:.2f}. MINE underestimates large values, and can certify at most "
        "ln n_test: read the plane's shape, not its absolute numbers."
    )
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class='note'>{html.escape(describe)}</p>"]
    if not plane.complete:
        body.append(f"<p class='warn'>Incomplete: {len(plane.rows)} of {plane.expected_rows} "
                    "estimates finished. Run the same command again to resume.</p>")
    flagged = [s for s in plane.summary if s.above_ceiling]
    if flagged:
        body.append("<p class='warn'>Above the ceiling (estimation error): " + html.escape(", ".join(
            f"epoch {s.epoch} {s.layer} {s.label} {s.mean:.3f} > {s.ceiling:.3f}" for s in flagged)) + "</p>")
    body += ["<h2>The plane</h2>", parts[0], "<h2>By epoch</h2>", parts[1], parts[2],
             "<h2>Does information fall with depth? (data-processing inequality)</h2>", _dpi_html(plane),
             "<h2>Summary</h2>", _summary_html(plane), "<h2>Training</h2>", _training_html(plane),
             "<h2>Settings</h2><pre>" + html.escape(json.dumps(cfg, indent=1, default=str)) + "</pre>"]
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page)
    return path


def _dpi_html(plane: InformationPlane) -> str:
    parts = []
    for quantity, about in (("ixt", "X"), ("ity", "Y")):
        checks = plane.check_dpi(quantity)
        label = QUANTITY_LABELS[quantity]
        if not checks:
            parts.append(f"<p class='note'>{label}: needs two layers or more.</p>")
            continue
        n_bad = sum(not c.holds for c in checks)
        parts.append(
            f"<p><b>{label}</b>: with the transformation as the only noise, a deeper layer cannot "
            f"hold more about {about}. {len(checks) - n_bad} of {len(checks)} consecutive pairs "
            "agree (no rise beyond the error bars); a rise beyond them is the estimator's error "
            "(the information is there, but harder for the critic to read), not information.</p>")
        items = "".join(f"<li{'' if c.holds else ' class=warn'}>{html.escape(str(c))}</li>" for c in checks)
        parts.append(f"<ul>{items}</ul>")
    return "".join(parts)


def _summary_html(plane: InformationPlane) -> str:
    head = ("<tr><th>epoch</th><th>layer</th><th>quantity</th><th>seeds</th><th>mean (nats)</th>"
            "<th>std</th><th>interval</th><th>ceiling</th><th>flags</th></tr>")
    lines = []
    for s in plane.summary:
        flags = ", ".join(f"<span title='{html.escape(FLAG_TEXT.get(k, k))}'>{html.escape(k)} "
                          f"{v}/{s.n_seeds}</span>" for k, v in s.n_flagged.items())
        lines.append(
            f"<tr><td class='num'>{s.epoch}</td><td>{html.escape(s.layer)}</td><td>{s.label}</td>"
            f"<td class='num'>{s.n_seeds}</td><td class='num'>{s.mean:.3f}</td>"
            f"<td class='num'>{s.std:.3f}</td><td class='num'>[{s.low:.3f}, {s.high:.3f}]</td>"
            f"<td class='num'>{s.ceiling:.2f}</td><td>{flags}</td></tr>")
    return f"<table>{head}{''.join(lines)}</table>"


def _training_html(plane: InformationPlane) -> str:
    if not plane.training:
        return "<p class='note'>No training history (no epoch was trained).</p>"
    keys = list(dict.fromkeys(k for h in plane.training for k in h))
    head = "<tr>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"
    lines = []
    for h in plane.training:
        cells = []
        for k in keys:
            v = h.get(k)
            text = (f"{v:.1%}" if k.endswith("accuracy") and isinstance(v, float)
                    else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v if v is not None else "")))
            cells.append(f"<td class='num'>{text}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(lines)}</table>"
