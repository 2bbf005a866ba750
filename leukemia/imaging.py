"""Decoding and cropping one C-NMC frame: what ingest stores and what predict feeds a model.

:func:`read_frame` decodes an image file to RGB uint8 (grayscale and 16-bit converted, with a
note). The cells sit segmented on a black 450x450 frame; :func:`preprocess_frame` crops it
(:func:`crop_window`: a window centred on the cell, so cells keep their real size;
:func:`crop_to_cell`: the cell's bounding square; or nothing) and resizes it, and
:func:`decode_image` does both for a file. :func:`no_cell_reason` says why a frame holds no cell
like the training ones. All share one segmentation, :func:`foreground_mask`. OpenCV is imported
by the functions that decode or resize, so importing this module costs only numpy.

    from leukemia.imaging import decode_image
    pixels, height, width = decode_image("cell.bmp", 224, crop="window", window=320)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def foreground_mask(img: np.ndarray, threshold: int = 10) -> np.ndarray:
    """The segmented cell: pixels of an RGB frame with a channel above ``threshold``.

    Channel by channel: the same mask as ``img.max(axis=2) > threshold``, 14x faster here
    (0.47 vs 6.6 ms per 450 px real frame, 40 frames); the crops and :func:`no_cell_reason`
    share it.
    """
    return np.maximum(np.maximum(img[..., 0], img[..., 1]), img[..., 2]) > threshold


def crop_to_cell(img: np.ndarray, threshold: int = 10, margin: float = 0.05) -> np.ndarray:
    """Crop an image to the square around its non-black pixels (the segmented cell).

    The square is centred on the cell's bounding box, its side the box's longer side plus
    ``margin`` of it on each end; parts outside the frame are padded with black. An all-black
    image is returned unchanged.
    """
    mask = foreground_mask(img, threshold)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return img
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = int(round(max(y1 - y0, x1 - x0) * (1 + 2 * margin)))
    return _square((y0 + y1) // 2, (x0 + x1) // 2, side, img)


def crop_window(img: np.ndarray, window: int, threshold: int = 10) -> np.ndarray:
    """A ``window`` x ``window`` px window of the frame centred on the cell's centroid.

    The cell keeps its size in pixels (a native-scale crop): parts of the window outside the
    frame are black, so a window larger than the frame, or an image smaller than the window, is
    padded rather than an error. An all-black image is windowed around its centre.
    """
    if window < 1:
        raise ValueError(f"window={window}: must be a positive number of pixels")
    mask = foreground_mask(img, threshold)
    ys, xs = np.nonzero(mask)
    if ys.size:
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
    else:
        cy, cx = img.shape[0] // 2, img.shape[1] // 2
    return _square(cy, cx, window, img)


def _square(cy: int, cx: int, side: int, img: np.ndarray) -> np.ndarray:
    """The ``side`` px square of ``img`` centred on ``(cy, cx)``, black outside the frame."""
    top, left = cy - side // 2, cx - side // 2
    out = np.zeros((side, side, 3), dtype=img.dtype)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + side, img.shape[0]), min(left + side, img.shape[1])
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = img[sy0:sy1, sx0:sx1]
    return out


CROPS = ("window", "cell", "none")
DEFAULT_CROP = "window"  # set by benchmarks/quality.py on held-out patients (PERFORMANCE.md)
DEFAULT_WINDOW = 320  # px of the 450 px frame: holds the largest cells whole (p99 side ~300 px)
DEFAULT_SIZE = 224  # stored image side in px: ingest's default, and a search's image size


def check_crop(crop: str | bool, window: int | None = None) -> tuple[str, int | None]:
    """Normalise a crop mode: ``(mode, window)``; ``True``/``False`` mean "cell"/"none".

    Raises:
        ValueError: unknown mode, or a window that is not a positive size.
    """
    if isinstance(crop, bool):
        crop = "cell" if crop else "none"
    if crop not in CROPS:
        raise ValueError(f"crop={crop!r}: expected one of {', '.join(CROPS)}")
    if crop != "window":
        return crop, None
    window = DEFAULT_WINDOW if window is None else int(window)
    if not 8 <= window <= 4096:
        raise ValueError(f"window={window}: the crop window side must be 8 to 4096 px")
    return crop, window


def preprocess_frame(img: np.ndarray, size: int, crop: str | bool = DEFAULT_CROP,
                     window: int | None = DEFAULT_WINDOW) -> np.ndarray:
    """Crop an RGB frame as ``crop`` says (``window``/``cell``/``none``) and resize to ``size``."""
    import cv2

    crop, window = check_crop(crop, window)
    if crop == "cell":
        img = crop_to_cell(img)
    elif crop == "window":
        assert window is not None
        img = crop_window(img, window)
    if img.shape[0] != size or img.shape[1] != size:
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    return np.ascontiguousarray(img)


def decode_image(path: str, size: int, crop: str | bool = DEFAULT_CROP,
                 raw: bytes | None = None, window: int | None = DEFAULT_WINDOW,
                 ) -> tuple[np.ndarray, int, int]:
    """Read one image file as RGB uint8, crop it (``window``/``cell``/``none``), resize it.

    Args:
        path: the image file (any format OpenCV decodes).
        size: output side in px.
        crop: ``"window"`` (a ``window`` px square of the frame centred on the cell: keeps its
            size), ``"cell"`` (the cell's bounding square: every cell fills the frame),
            ``"none"`` (the whole frame); ``True``/``False`` mean cell/none.
        raw: the file's bytes, if already read.
        window: side of the window crop in px of the original frame.

    Returns:
        ``(pixels, source_height, source_width)``.

    Raises:
        ValueError: the file is unreadable, truncated or not an image.
    """
    img = read_frame(path, raw).rgb
    h, w = img.shape[:2]
    return preprocess_frame(img, size, crop, window), h, w


UNREADABLE = "not a readable image (truncated, corrupt or not an image file)"
GRAYSCALE_NOTE = "grayscale: its one channel copied to R, G and B"


@dataclass(frozen=True)
class Frame:
    """An image file decoded to RGB uint8, and what its conversion did (one note each)."""

    rgb: np.ndarray  # (h, w, 3) uint8
    notes: tuple[str, ...] = ()


def read_frame(path: str, raw: bytes | None = None) -> Frame:
    """Read an image file as RGB uint8, converting as ingest and predict both do.

    8-bit colour is read as it is (alpha dropped); grayscale has its channel copied to R, G
    and B; 16 bits per channel keep the high byte (``value >> 8``, as OpenCV reads a 16-bit
    PNG as colour). Each conversion but the alpha's adds a note.

    Raises:
        ValueError: unreadable, truncated, not an image, or samples that are neither 8- nor
            16-bit integers (floating-point TIFFs).
        OSError: the file cannot be opened.
    """
    import cv2  # heavy import kept out of module import time

    data = np.frombuffer(raw, np.uint8) if raw is not None else np.fromfile(path, np.uint8)
    # ANYDEPTH|ANYCOLOR: the file's own depth and channels (so a conversion can be noted),
    # alpha dropped and EXIF orientation applied as IMREAD_COLOR does
    img = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if data.size else None
    if img is None:
        raise ValueError(UNREADABLE)
    notes = []
    if img.dtype == np.uint16:
        top = int(img.max())
        notes.append(f"16-bit: scaled to 8 bits (value >> 8; its brightest value {top} "
                     f"became {top >> 8})")
        img = np.right_shift(img, 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"{img.dtype} samples: only 8- and 16-bit images are read; save it "
                         "as an 8-bit RGB PNG or BMP")
    if img.ndim == 2:
        notes.append(GRAYSCALE_NOTE)
        return Frame(np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2)), tuple(notes))
    return Frame(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), tuple(notes))  # OpenCV decodes BGR


# Cell or not: the foreground (pixels with a channel above the crops' floor of 10) of each of
# the 3,739 real C-NMC cells in cnmc-real and cnmc-dev is one piece of 7,949-50,511 px
# (median 33,615), 4-25% of its 450 px frame (PERFORMANCE.md gives the command).
CELL_PIXELS = (2_000, 200_000)  # a quarter of the smallest cell to four times the largest
CELL_MAX_COVER = 0.9  # a frame fuller than this has no black background: not a segmented cell


def no_cell_reason(img: np.ndarray, threshold: int = 10) -> str | None:
    """Why an RGB frame holds no cell like the training ones, or None when it holds one.

    The cell is what the crops segment: pixels with a channel above ``threshold``. A frame
    with none (all black), one whose foreground covers more than :data:`CELL_MAX_COVER` of it
    (no black background: random noise, a photograph), or a foreground outside
    :data:`CELL_PIXELS` is not a cell.
    """
    n = int(np.count_nonzero(foreground_mask(img, threshold)))
    lo, hi = CELL_PIXELS
    if n == 0:
        return f"no cell found: no pixel above the black background (> {threshold})"
    cover = n / (img.shape[0] * img.shape[1])
    if cover > CELL_MAX_COVER:
        return (f"no cell found: the foreground covers {cover:.0%} of the frame (a segmented "
                f"cell lies on a black background; the training cells cover 4-25%)")
    if not lo <= n <= hi:
        return (f"no cell found: {n:,} px of foreground, outside {lo:,}-{hi:,} (the training "
                "cells hold 7,949-50,511 px)")
    return None
