"""Pictures of cells for ``report.html``: a data overview and the gallery of errors.

:func:`overview_section` shows how many cells each split, fold and patient holds (the store
manifest's counts) and a grid of sample cells of each class; :func:`errors_section` shows the
validation cells the final model got wrong at its threshold, normal cells called ALL and ALL
cells called normal, most confident first, each with its P(ALL). Images are small PNGs
(:func:`png_data_uri`, at most 96 px a side) embedded as ``data:`` URIs, so the page stays one
file. A picture that cannot be drawn becomes a placeholder that says why; a missing input
becomes a note. Called by ``search.report.write_report``.
"""

from __future__ import annotations

import base64
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from search.svg import CLASS_COLOURS, CLASS_NAMES, esc, fmt, hbars, note, num

__all__ = ["CSS", "MAX_ERRORS", "MAX_SIDE", "errors_section", "overview_section", "png_data_uri"]

MAX_SIDE = 96  # pixels: a 96 px PNG of a cell is ~20 KB, enough to see its nucleus
MAX_ERRORS = 60  # gallery cap; the final step passes ~48
MAX_SAMPLES = 24  # sample cells shown per class
_NAME_TO_LABEL = {"ALL": 1, "all": 1, "normal": 0, "hem": 0}

CSS = """
.cells{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 14px}
figure.cell{margin:0;width:104px;font-size:11px;line-height:1.3;text-align:center}
figure.cell img{display:block;margin:0 auto 3px;border:3px solid #ccc;border-radius:3px;
 background:#000}
.cell-missing{width:96px;height:96px;margin:0 auto 3px;background:#eee;color:#900;
 font-size:10px;overflow:hidden;display:flex;align-items:center;justify-content:center}
"""


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


def _figure(pixels: Any, caption: str, title: str, colour: str) -> str:
    """One captioned cell picture, or a placeholder saying why it cannot be drawn."""
    try:
        uri = png_data_uri(pixels)
        h, w = np.asarray(pixels).shape[:2]
        scale = min(1.0, MAX_SIDE / max(h, w))
        img = (f'<img src="{uri}" width="{max(1, round(w * scale))}" '
               f'height="{max(1, round(h * scale))}" alt="{esc(title)}" '
               f'style="border-color:{colour}">')
    except (ValueError, TypeError) as exc:
        img = f'<div class="cell-missing">{esc(exc)}</div>'
    return (f'<figure class="cell" title="{esc(title)}">{img}'
            f"<figcaption>{caption}</figcaption></figure>")


# --------------------------------------------------------------------------- overview


def _class_counts(row: dict) -> tuple[int, int, int]:
    """(cells, ALL, normal) of a manifest count row (``n``, ``all``, ``hem``)."""
    n_all, n_hem = int(row.get("all") or 0), int(row.get("hem") or 0)
    return int(row.get("n") or n_all + n_hem), n_all, n_hem


def _counts_table(rows: dict, what: str, patients: dict | None = None) -> str:
    """Cells, ALL, normal and share of ALL per split or fold (and patients per split)."""
    head = f"<tr><th>{esc(what)}</th><th>cells</th><th>ALL</th><th>normal</th><th>% ALL</th>"
    head += "<th>patients</th></tr>" if patients is not None else "</tr>"
    body = []
    for name, row in rows.items():
        n, n_all, n_hem = _class_counts(row or {})
        share = f"{100 * n_all / n:.0f}%" if n else "—"
        cells = (f"<tr><th>{esc(name)}</th><td>{n}</td><td>{n_all}</td><td>{n_hem}</td>"
                 f"<td>{share}</td>")
        if patients is not None:
            cells += f"<td>{len(patients.get(name) or {})}</td>"
        body.append(cells + "</tr>")
    return f'<table class="grid">{head}{"".join(body)}</table>'


def _patients_part(patients: dict) -> str:
    """Per split: how many patients and cells per patient, with a bar chart to unfold."""
    parts = []
    for split, cells in patients.items():
        sizes = {str(p): int(n) for p, n in (cells or {}).items() if num(n) is not None}
        if not sizes:
            continue
        values = sorted(sizes.values())
        parts.append(
            f"<p><b>{esc(split)}</b>: {len(sizes)} patients, {min(values)}–{max(values)} cells "
            f"each (median {statistics.median(values):g}).</p>"
        )
        items = [(p, float(n), "#7f8c8d", str(n))
                 for p, n in sorted(sizes.items(), key=lambda pn: (-pn[1], pn[0]))]
        chart = hbars(items, x_label="cells", x_max=float(max(values)),
                      label=f"cells per patient, {split}")
        parts.append(f"<details><summary>cells per patient ({esc(split)})</summary>"
                     f"{chart}</details>")
    return "".join(parts)


def _samples_part(samples: dict) -> str:
    """A grid of sample cells for each class."""
    parts = []
    for name, images in samples.items():
        label = _NAME_TO_LABEL.get(str(name))
        colour = CLASS_COLOURS.get(label, "#ccc") if label is not None else "#ccc"
        shown = list(images or [])[:MAX_SAMPLES]
        if not shown:
            continue
        figures = "".join(
            _figure(img, "", f"{name} sample {i + 1}", colour) for i, img in enumerate(shown)
        )
        parts.append(f"<h3>{esc(name)} cells ({len(shown)} samples)</h3>"
                     f'<div class="cells">{figures}</div>')
    return "".join(parts) or note("No sample cells were given.")


def overview_section(overview: dict | None) -> str:
    """The HTML of the report's data overview section.

    Args:
        overview: ``{"counts": {"splits": ..., "folds": ..., "patients": ...}, "samples":
            {"ALL": [uint8 RGB arrays], "normal": [...]}}`` where the counts are the store
            manifest's (``leukemia.store``); either part may be missing. None gives a note.

    Returns:
        HTML without the section's heading.
    """
    if not overview:
        return note("No data overview was given.")
    counts = overview.get("counts") or {}
    splits, folds = counts.get("splits") or {}, counts.get("folds") or {}
    patients = counts.get("patients") or {}
    parts = []
    if splits:
        parts.append("<h3>Cells per split</h3>" + _counts_table(splits, "split", patients))
    if folds:
        parts.append("<h3>Cells per training fold</h3>" + _counts_table(folds, "fold"))
    if patients:
        parts.append("<h3>Patients</h3>" + _patients_part(patients))
    if not parts:
        parts.append(note("No cell counts were given."))
    parts.append(_samples_part(overview.get("samples") or {}))
    return "".join(parts)


# --------------------------------------------------------------------------- errors


def _error_figure(cell: dict) -> str:
    """One misclassified cell with its P(ALL), patient and true class."""
    label = int(cell.get("label", -1)) if num(cell.get("label")) is not None else None
    p = num(cell.get("p_all"))
    p_text = "—" if p is None else f"{p:.3f}"
    truth = CLASS_NAMES.get(label, "?") if label is not None else "?"
    caption = (f"P(ALL) <b>{esc(p_text)}</b><br>"
               f'<span class="muted">patient {esc(fmt(cell.get("patient_id")))}</span>')
    title = f"{cell.get('image_id')}: true {truth}, patient {cell.get('patient_id')}, " \
            f"P(ALL) {p_text}"
    colour = CLASS_COLOURS.get(label, "#ccc") if label is not None else "#ccc"
    return _figure(cell.get("pixels"), caption, title, colour)


def _confidence(cell: dict) -> float:
    """How confidently wrong: P(ALL) for a normal cell, 1 - P(ALL) for an ALL cell."""
    p = num(cell.get("p_all"))
    if p is None:
        return -1.0
    return p if cell.get("label") == 0 else 1.0 - p


def errors_section(final: dict | None) -> str:
    """The HTML of the report's gallery of misclassified validation cells.

    Args:
        final: The final step's result; reads ``wrong`` (a list of ``{"image_id",
            "patient_id", "label", "p_all", "pixels"}``, pixels a uint8 RGB array),
            ``threshold`` and ``metrics_at_threshold``/``metrics`` (for the error count).

    Returns:
        HTML without the section's heading.
    """
    if final is None:
        return note("No final result, so no misclassified cells to show.")
    wrong: Sequence[dict] | None = final.get("wrong")
    has_val = bool(final.get("metrics") or final.get("metrics_at_threshold"))
    if wrong is None:
        return note("No misclassified cells were recorded"
                    + ("." if has_val else ": this store has no validation split."))
    t = num(final.get("threshold"))
    t_text = f"{0.5 if t is None else t:.4g}"
    if not wrong:
        return note(f"The model classified every validation cell correctly at t = {t_text}."
                    if has_val else "No validation cells to show: this store has no "
                    "validation split.")
    metrics = final.get("metrics_at_threshold") or final.get("metrics") or {}
    total = None
    matrix: Any = metrics.get("confusion_matrix")
    try:
        (_, fp), (fn, _) = matrix
        total = int(fp) + int(fn)
    except (TypeError, ValueError):
        pass
    shown = list(wrong)[:MAX_ERRORS]
    of = f" of {total}" if total is not None and total > len(shown) else ""
    parts = [f'<p class="muted">{len(shown)}{of} validation cells the model got wrong at '
             f"t = {esc(t_text)}, most confidently wrong first; the frame colour is the true "
             "class. Hover a cell for its image id.</p>"]
    groups = ((0, "Normal cells called ALL (false positives)"),
              (1, "ALL cells called normal (false negatives)"))
    for label, heading in groups:
        cells = sorted((c for c in shown if c.get("label") == label), key=_confidence,
                       reverse=True)
        if cells:
            figures = "".join(_error_figure(c) for c in cells)
            parts.append(f"<h3>{esc(heading)}: {len(cells)}</h3>"
                         f'<div class="cells">{figures}</div>')
    others = [c for c in shown if c.get("label") not in (0, 1)]
    if others:
        parts.append(f"<h3>Cells without a 0/1 label: {len(others)}</h3><div class=\"cells\">"
                     + "".join(_error_figure(c) for c in others) + "</div>")
    return "".join(parts)
