"""Pictures for ``report.html``: cell images, matplotlib figures, the data and error galleries.

:func:`png_data_uri` makes a cell image a small PNG ``data:`` URI and :func:`svg` a matplotlib
figure inline SVG (text kept as text), so the page stays one file. :func:`overview` gathers the
data overview (cells per split, fold and patient; sample cells) and :func:`errors` the
validation cells the final model got wrong, most confidently wrong first. A picture that cannot
be drawn becomes a placeholder that says why; a missing input, a note.
"""

from __future__ import annotations

import base64
import io
import math
import statistics
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from markupsafe import Markup
from matplotlib.axes import Axes
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from search.results import FinalResult

__all__ = ["MAX_ERRORS", "MAX_SIDE", "errors", "figure", "num", "overview", "png_data_uri", "svg"]

MAX_SIDE = 96  # pixels: a 96 px PNG of a cell is ~20 KB, enough to see its nucleus
MAX_ERRORS = 60  # gallery cap; the final step passes ~48
MAX_SAMPLES = 24  # sample cells shown per class
CLASS_NAMES = {0: "normal", 1: "ALL"}
CLASS_COLOURS: dict[Any, str] = {0: "#2e9d5b", 1: "#8e44ad"}
_NAME_TO_LABEL = {"ALL": 1, "all": 1, "normal": 0, "hem": 0}


def num(value: Any) -> float | None:
    """``value`` as a finite float, or None for None, NaN, infinities, bools and non-numbers."""
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def figure(width: float, height: float) -> tuple[Figure, Axes]:
    """A new figure (no pyplot state) with one axes, laid out to fit its labels."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def svg(fig: Figure) -> Markup:
    """``fig`` as an inline ``<svg>`` element whose text stays selectable text."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata=dict.fromkeys(("Creator", "Date", "Format",
                                                                 "Type")))
    text = buf.getvalue()
    return Markup(text[text.index("<svg"):])  # drop the XML prolog and DOCTYPE


def png_data_uri(rgb: Any, max_side: int = MAX_SIDE) -> str:
    """A cell image as a ``data:image/png;base64,...`` URI, shrunk to ``max_side`` pixels.

    Args:
        rgb: uint8 array of shape (h, w, 3) in RGB order (as the store holds pixels).
        max_side: Longest side of the embedded image; larger images shrink (area
            interpolation), smaller ones are kept as they are.

    Returns:
        The URI, for an ``<img src=...>``.

    Raises:
        ValueError: If ``rgb`` is not a non-empty uint8 (h, w, 3) array or PNG encoding fails.
    """
    import cv2

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise ValueError(
            f"a cell image must be a uint8 RGB array of shape (h, w, 3), got dtype {arr.dtype} "
            f"shape {arr.shape}; pass the store's pixels (Selection.images[i])"
        )
    h, w = arr.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR))  # OpenCV wants BGR
    if not ok:
        raise ValueError(f"OpenCV could not encode a {arr.shape} image as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _picture(pixels: Any, label: Any, title: str, caption: str = "", patient: Any = None
             ) -> dict[str, Any]:
    """One cell picture for the template: its URI (or why there is none), frame colour, text."""
    picture = {"title": title, "caption": caption, "patient": patient, "uri": None,
               "error": None, "colour": CLASS_COLOURS.get(label, "#ccc")}
    try:
        picture["uri"] = png_data_uri(pixels)
    except (ValueError, TypeError) as exc:
        picture["error"] = str(exc)
    return picture


def _counts(rows: dict, patients: dict | None) -> list[list[Any]]:
    """Cells, ALL, normal, share of ALL (and patients) per split or fold of the manifest."""
    out = []
    for name, given in rows.items():
        row = {"all": None, "hem": None, "n": None, **given}  # a manifest may lack any of them
        n_all, n_hem = int(row["all"] or 0), int(row["hem"] or 0)
        n = int(row["n"] or n_all + n_hem)
        cells = [name, n, n_all, n_hem, f"{100 * n_all / n:.0f}%" if n else "—"]
        out.append(cells + ([len(patients.get(name) or {})] if patients is not None else []))
    return out


def _patients(split: str, sizes: dict[str, int]) -> dict[str, Any]:
    """A split's patients: how many, cells each, and a bar chart of cells per patient."""
    values = sorted(sizes.values())
    fig, ax = figure(7, 1.1 + 0.22 * len(sizes))
    order = sorted(sizes.items(), key=lambda pn: (pn[1], pn[0]))  # most cells at the top
    bars = ax.barh([p for p, _ in order], [n for _, n in order], color="#7f8c8d")
    ax.bar_label(bars, padding=3)
    ax.set(xlabel="cells", title=f"cells per patient, {split}")
    return {"split": split, "n": len(sizes), "lo": values[0], "hi": values[-1],
            "median": f"{statistics.median(values):g}", "figure": svg(fig)}


def overview(overview: dict | None) -> dict[str, Any] | None:
    """The data overview section's content, or None when no overview was given.

    Args:
        overview: ``{"counts": {"splits": ..., "folds": ..., "patients": ...}, "samples":
            {"ALL": [uint8 RGB arrays], "normal": [...]}}`` where the counts are the store
            manifest's (``leukemia.store``); any part may be missing or None.
    """
    if not overview:
        return None
    counts = {"splits": {}, "folds": {}, "patients": {}, **(overview.get("counts") or {})}
    patients = counts["patients"] or {}
    sizes = {split: {str(p): int(n) for p, n in (cells or {}).items() if num(n) is not None}
             for split, cells in patients.items()}
    samples = [(name, [_picture(img, _NAME_TO_LABEL.get(str(name)), f"{name} sample {i + 1}")
                       for i, img in enumerate(list(images)[:MAX_SAMPLES])])
               for name, images in (overview.get("samples") or {}).items() if images is not None]
    return {"splits": _counts(counts["splits"] or {}, patients),
            "folds": _counts(counts["folds"] or {}, None),
            "patients": [_patients(split, s) for split, s in sizes.items() if s],
            "samples": [(name, shown) for name, shown in samples if shown]}


def _wrongness(cell: dict) -> float:
    """How confidently wrong: P(ALL) for a normal cell, 1 - P(ALL) for an ALL cell."""
    p = num(cell["p_all"])
    return -1.0 if p is None else p if cell["label"] == 0 else 1.0 - p


def errors(final: FinalResult | None) -> dict[str, Any] | None:
    """The gallery of misclassified validation cells, grouped by true class.

    Args:
        final: The final step's result, or None; reads ``wrong`` (a list of ``{"image_id",
            "patient_id", "label", "p_all", "pixels"}``, pixels a uint8 RGB array; None when not
            recorded), ``threshold`` and ``metrics_at_threshold``/``metrics`` (for the error
            count).

    Returns:
        None without a final result, else ``{"recorded", "has_validation", "shown", "total",
        "threshold", "groups": [(heading, pictures)]}``; ``recorded`` is False when ``wrong``
        is missing, and ``groups`` empty when nothing was wrong.
    """
    if final is None:
        return None
    val = final.metrics_at_threshold or final.metrics
    keys = dict.fromkeys(("image_id", "patient_id", "label", "p_all", "pixels"))
    shown = [{**keys, **cell} for cell in list(final.wrong or [])[:MAX_ERRORS]]
    total = None
    try:
        (_, fp), (fn, _) = (val or {})["confusion_matrix"]
        total = int(fp) + int(fn)
    except (TypeError, ValueError, KeyError):
        pass
    groups = [(0, "Normal cells called ALL (false positives)"),
              (1, "ALL cells called normal (false negatives)"),
              (None, "Cells without a 0/1 label")]
    out = []
    for label, heading in groups:
        cells = sorted((c for c in shown if c["label"] == label or label is None
                        and c["label"] not in (0, 1)), key=_wrongness, reverse=True)
        pictures = []
        for c in cells:
            p = num(c["p_all"])
            p_text = "—" if p is None else f"{p:.3f}"
            title = (f"{c['image_id']}: true {CLASS_NAMES.get(c['label'], '?')}, patient "
                     f"{c['patient_id']}, P(ALL) {p_text}")
            pictures.append(_picture(c["pixels"], c["label"], title, p_text, c["patient_id"]))
        if pictures:
            out.append((heading, pictures))
    t = num(final.threshold)
    return {"recorded": final.wrong is not None, "has_validation": bool(val),
            "shown": len(shown), "total": total if total and total > len(shown) else None,
            "threshold": 0.5 if t is None else t, "groups": out}
