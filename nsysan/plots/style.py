"""One look for every nsysan figure: the seaborn theme, colours, unit-labelled axes and notes on the figure.

Figures are :class:`matplotlib.figure.Figure` objects made without pyplot, so they are headless (Agg) and
never touch pyplot's global figure list. The seaborn theme is applied through :func:`matplotlib.rc_context`
(never ``sns.set_theme``, which changes global state) while a figure is built, under a lock, so that
figures built in several threads at once each get the theme and nothing else.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# -- theme ---------------------------------------------------------------------------------------------------
#: seaborn 0.13's ``axes_style("whitegrid")`` and ``plotting_context("notebook", font_scale=0.85)``, written out so
#: that drawing a figure does not import seaborn (and with it scipy.stats: seconds on a small machine);
#: tests/test_report.py checks them against seaborn.
SEABORN_THEME: dict[str, Any] = {
    "figure.facecolor": "white", "axes.labelcolor": ".15", "xtick.direction": "out", "ytick.direction": "out",
    "xtick.color": ".15", "ytick.color": ".15", "axes.axisbelow": True, "grid.linestyle": "-", "text.color": ".15",
    "font.family": ["sans-serif"],
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans", "sans-serif"],
    "lines.solid_capstyle": "round", "patch.edgecolor": "w", "patch.force_edgecolor": True, "image.cmap": "rocket",
    "xtick.top": False, "ytick.right": False, "axes.grid": True, "axes.facecolor": "white", "axes.edgecolor": ".8",
    "grid.color": ".8", "axes.spines.left": True, "axes.spines.bottom": True, "axes.spines.right": True,
    "axes.spines.top": True, "xtick.bottom": False, "ytick.left": False, "axes.linewidth": 1.25, "grid.linewidth": 1,
    "lines.linewidth": 1.5, "lines.markersize": 6, "patch.linewidth": 1, "xtick.major.width": 1.25,
    "ytick.major.width": 1.25, "xtick.minor.width": 1, "ytick.minor.width": 1, "xtick.major.size": 6,
    "ytick.major.size": 6, "xtick.minor.size": 4, "ytick.minor.size": 4, "font.size": 10.2, "axes.labelsize": 10.2,
    "axes.titlesize": 10.2, "xtick.labelsize": 9.35, "ytick.labelsize": 9.35, "legend.fontsize": 9.35,
    "legend.title_fontsize": 10.2,
}
#: seaborn's "deep" palette (``color_palette("deep", 10)``).
DEEP = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]
RC: dict[str, Any] = {
    **SEABORN_THEME,
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "sans-serif"],
    "axes.titleweight": "bold",
    "figure.titlesize": 12,
    "figure.titleweight": "bold",
    "legend.frameon": True,
    "legend.framealpha": 0.9,
    "legend.edgecolor": ".8",
    "savefig.dpi": 120,
    "savefig.facecolor": "white",
    "image.cmap": "RdBu_r",
}
_LOCK = threading.RLock()
F = TypeVar("F", bound=Callable[..., Figure])

# -- colours -------------------------------------------------------------------------------------------------
_DEEP = DEEP
#: Pipeline stages in pipeline order, with their colours (other stages get the palette's remaining colours).
PIPELINE_STAGES = ("preprocess", "h2d", "forward", "d2h")
STAGE_COLORS: dict[str, str] = {"preprocess": _DEEP[1], "h2d": _DEEP[2], "forward": _DEEP[0], "d2h": _DEEP[4]}
_SPARE = [_DEEP[i] for i in (3, 5, 6, 8, 9, 7)]
#: Verdicts of nsysan.compare / nsysan.numa_penalty.
VERDICT_COLORS: dict[str, str] = {
    "slower": "#c0392b", "faster": "#1e8449", "no clear change": "#7f8c8d", "too few instances": "#c8c8c8",
    "no baseline": "#c8c8c8", "baseline": "#000000",
}
#: GPU operations: kernels, then copies by direction (labels of the export's ENUM_CUDA_MEMCPY_OPER), memsets.
OP_COLORS: dict[str, str] = {
    "kernel": _DEEP[9], "Host-to-Device": _DEEP[2], "Device-to-Host": _DEEP[4], "Device-to-Device": _DEEP[1],
    "Peer-to-Peer": _DEEP[4], "Host-to-Host": _DEEP[5], "memcpy": _DEEP[6], "memset": "#8c8c8c", "Memset": "#8c8c8c",
}
NOTE_GID = "nsysan-note"
STATEMENT_GID = "nsysan-statement"
_NOTE_SIZE = 8.5


def stage_color(stage: str, order: Sequence[str] = ()) -> str:
    """Colour of a stage: the fixed one of a pipeline stage, else a spare colour by position in ``order``."""
    if stage in STAGE_COLORS:
        return STAGE_COLORS[stage]
    others = [s for s in order if s not in STAGE_COLORS]
    i = others.index(stage) if stage in others else sum(map(ord, stage))
    return _SPARE[i % len(_SPARE)]


def palette(n: int) -> list[str]:
    """``n`` distinguishable colours (seaborn's deep palette, then husl)."""
    if n <= len(_DEEP):
        return _DEEP[:n]
    import seaborn as sns

    return sns.color_palette("husl", n).as_hex()


# -- building figures ----------------------------------------------------------------------------------------
def styled(func: F) -> F:
    """Build the figure inside the nsysan theme (and a lock: rc parameters are process-wide)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with _LOCK, mpl.rc_context(RC):
            fig = func(*args, **kwargs)
            for ax in fig.axes:  # create ticks now, inside the theme; later ticks copy their properties
                ax.xaxis.get_major_ticks()
                ax.yaxis.get_major_ticks()
            return fig

    return wrapper  # type: ignore[return-value]


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], sharex: bool | str = False,
               sharey: bool | str = False, **grid: Any) -> tuple[Figure, np.ndarray]:
    """A headless Figure (Agg canvas, constrained layout) and its Axes as a 2-D array."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey, gridspec_kw=grid or None)
    return fig, axes


def axes_for(ax: Axes | Sequence[Axes] | None, n: int, *, figsize: tuple[float, float],
             **kwargs: Any) -> tuple[Figure, list[Axes]]:
    """The caller's Axes (one, or ``n`` of them) or a new figure with ``n`` side-by-side Axes."""
    if ax is None:
        fig, axes = new_figure(1, n, figsize=figsize, **kwargs)
        return fig, list(axes[0])
    given = [ax] if isinstance(ax, Axes) else list(ax)
    if len(given) != n:
        raise ValueError(f"this figure draws {n} panel(s); got {len(given)} Axes")
    return given[0].figure, given


def unit_label(quantity: str, unit: str) -> str:
    """An axis label that names its unit: ``unit_label("GPU time", "ms")`` -> ``"GPU time (ms)"``."""
    return f"{quantity} ({unit})"


def set_title(fig: Figure, title: str, *, axes_title: Axes | None = None) -> None:
    """The figure's title (suptitle), or the title of ``axes_title`` when the figure is the caller's."""
    if axes_title is not None:
        axes_title.set_title(title, loc="left", fontsize=10, fontweight="bold")
    else:
        fig.suptitle(title, x=0.01, ha="left")


def add_note(fig: Figure, text: str) -> None:
    """A plain note at the bottom of the figure (what was aggregated, left out or assumed).

    Space for the notes is reserved below the constrained layout, so they never cover an axis label."""
    old = [t for t in fig.texts if t.get_gid() == NOTE_GID]
    texts = [t.get_text() for t in old] + [wrap(text, int(fig.get_figwidth() * 14))]
    for t in old:
        t.remove()
    height = fig.get_figheight()
    line = _NOTE_SIZE * 1.3 / 72 / height
    total = sum(t.count("\n") + 1 for t in texts)
    band = min(0.45, total * line + 10 / 72 / height)
    y = band - 4 / 72 / height
    for body in texts:
        fig.text(0.01, y, body, ha="left", va="top", fontsize=_NOTE_SIZE, color="0.3", gid=NOTE_GID)
        y -= (body.count("\n") + 1) * line
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set"):
        engine.set(rect=(0, band, 1, 1 - band))


def notes(fig: Figure) -> list[str]:
    """The notes :func:`add_note` put on ``fig``."""
    return [t.get_text() for t in fig.texts if t.get_gid() == NOTE_GID]


def statement(fig: Figure, ax: Axes, text: str) -> None:
    """Replace a plot by a plain sentence (e.g. "only one NUMA node: nothing to compare")."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, wrap(text, 80), ha="center", va="center", fontsize=11, transform=ax.transAxes, gid=STATEMENT_GID)


# -- text ------------------------------------------------------------------------------------------------------
def shorten(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters with an ellipsis (long kernel names)."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


def group_label(values: Mapping[str, Any], keys: Iterable[str], *, missing: bool = False) -> str:
    """How a group of runs is named on an axis: text values as they are, numbers as ``key=value``, missing
    values left out (``vit32x6x512 · pageable``, ``vit32x6x512 · numa=1``) or, with ``missing``, shown as
    ``key=none``."""
    parts = []
    for key in keys:
        value = values.get(key)
        if value is None:
            if missing:
                parts.append(f"{key}=none")
            continue
        parts.append(str(value) if isinstance(value, str) else f"{key}={value}")
    return " · ".join(parts) or "all runs"


def figure_legend(fig: Figure, axes: Sequence[Axes], *, title: str | None = None, ncol: int | None = None,
                  loc: str = "outside upper left") -> None:
    """One legend for the figure, above the panels (below the title), built from every panel's labelled
    artists (labels starting with ``_`` are left out, as matplotlib does)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc=loc, ncol=ncol or min(len(seen), 7), title=title,
                   fontsize=8.5, title_fontsize=9)


def legend_outside(ax: Axes, *, title: str | None = None, ncol: int | None = None, **kwargs: Any) -> None:
    """A legend above the axes, out of the data's way."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ax.legend(handles, labels, title=title, loc="lower left", bbox_to_anchor=(0, 1.01),
              ncol=ncol or min(len(handles), 6), fontsize=8.5, title_fontsize=9, borderaxespad=0, **kwargs)
