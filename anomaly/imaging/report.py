"""The imaging QA report: scores.csv, errors.csv and an offline index.html to review flagged images.

Images are scored by ``anomaly.imaging.scoring``; this module only renders what it gives. The
report is written while scoring goes on: CSV rows are appended per batch and each flagged
image's three thumbnails (input, reconstruction, residual heatmap over the input) are written
as PNG files under ``thumbs/`` at once, so memory does not grow with the folder size. The
page's table of the highest-scoring ``max_table_rows`` images shows each one's input
thumbnail too (the borderline normals a reviewer checks next); an unflagged image's thumbnail
is written when it enters that table and deleted when a higher score pushes it out, so the
folder holds at most the table's and the flagged images' thumbnails. Only the small per-row
facts needed to sort the page are kept until :meth:`ReportWriter.close` writes
``index.html``. The page links thumbnails by relative path and loads nothing from the
network, so the report folder can be copied and opened offline.

The heatmap colour scale is fixed (``heatmap_vmax`` in [0, 1] pixel units, default 0.5 = an
error of half the intensity range is full colour), not stretched per image: a well
reconstructed image then shows a dark heatmap instead of amplified noise.
"""

from __future__ import annotations

import csv
import heapq
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anomaly.bundle.decision import exceeds
from anomaly.imaging.readers import ImageMeta, ImageReadError, discover_files
from anomaly.imaging.scoring import score_folder, stability_notice

UID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
ERROR_COLUMNS = ("path", "frame", "reason", "message")
THUMB_PX = 112
ROW_THUMB_PX = 40  # the table's input thumbnails


@dataclass
class _Flagged:
    score: float
    row: int
    meta: ImageMeta
    components: dict[str, float]
    thumbs: tuple[str, str, str]


@dataclass
class ReportSummary:
    """What a report run produced; ``failed_files`` drives the CLI's exit code."""

    out_dir: Path
    scored: int
    flagged: int
    errors: int
    failed_files: int
    threshold: float
    flagged_paths: list[str] = field(default_factory=list)


def _colormap(values: np.ndarray) -> np.ndarray:
    """Inferno colours (float RGB) for values in [0, 1]."""
    from matplotlib import colormaps

    return np.asarray(colormaps["inferno"](np.asarray(values, dtype=np.float64)))[..., :3].astype(
        np.float32
    )


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(image, 0.0, 1.0)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return (image * 255.0 + 0.5).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, residual: np.ndarray, vmax: float = 0.5) -> np.ndarray:
    """The residual |x - x_hat| as inferno colours blended over a grayscale copy of the input.

    Blend weight grows with the residual, so pixels the model reconstructs well show the
    input and badly reconstructed ones show the heat colour.
    """
    gray = image.mean(axis=2) if image.ndim == 3 else image
    res = residual.mean(axis=2) if residual.ndim == 3 else residual
    heat = np.clip(res / vmax, 0.0, 1.0)
    alpha = (0.25 + 0.75 * heat)[:, :, None]
    base = np.repeat(np.clip(gray, 0.0, 1.0)[:, :, None], 3, axis=2)
    return base * (1.0 - alpha) + _colormap(heat) * alpha


def _save_png(rgb: np.ndarray, path: Path) -> None:
    Image.fromarray(_to_uint8_rgb(rgb)).save(path, format="PNG", optimize=False)


class ReportWriter:
    """Streams scores.csv / errors.csv and thumbnails; writes index.html on :meth:`close`."""

    def __init__(
        self,
        out_dir: str | Path,
        threshold: float,
        component_names: Sequence[str],
        *,
        heatmap_vmax: float = 0.5,
        heatmap_label: str = "Residual heatmap |input − reconstruction|",
        heatmap_caption: str = "residual heatmap",
        max_table_rows: int = 2000,
        title: str = "Imaging anomaly report",
        model: str = "",
        notice: str = "",
    ):
        self.out_dir = Path(out_dir)
        self.thumb_dir = self.out_dir / "thumbs"
        self.thumb_dir.mkdir(parents=True, exist_ok=True)
        self.threshold = float(threshold)
        self.component_names = list(component_names)
        self.heatmap_vmax = heatmap_vmax
        self.heatmap_label = heatmap_label
        self.heatmap_caption = heatmap_caption
        self.max_table_rows = max_table_rows
        self.title = title
        self.model = model
        self.notice = notice  # what the reader must know before trusting the page
        self._rows = 0
        self._flagged: list[_Flagged] = []
        # the table: (score, -row, path, frame, flagged, input thumbnail), a min-heap by score
        self._top: list[tuple[float, int, str, str, bool, str]] = []
        self._errors: list[ImageReadError] = []
        self._failed_files: set[str] = set()
        self._scores_fh = open(self.out_dir / "scores.csv", "w", newline="", encoding="utf-8")
        self._scores = csv.writer(self._scores_fh)
        self._scores.writerow(
            ["path", "frame", *UID_COLUMNS, "score", *self.component_names, "is_anomaly"]
        )
        self._errors_fh = open(self.out_dir / "errors.csv", "w", newline="", encoding="utf-8")
        self._errors_csv = csv.writer(self._errors_fh)
        self._errors_csv.writerow(ERROR_COLUMNS)

    def add(
        self,
        metas: Sequence[ImageMeta],
        inputs: np.ndarray,
        reconstructions: np.ndarray,
        residuals: np.ndarray,
        scores: np.ndarray,
        components: dict[str, np.ndarray],
        flags: np.ndarray,
    ) -> None:
        """Record one scored batch; ``flags`` are its decisions (``anomaly.bundle.decision``)."""
        scores = np.asarray(scores, dtype=np.float64)
        for i, meta in enumerate(metas):
            row = self._rows
            self._rows += 1
            comp = {name: float(components[name][i]) for name in self.component_names}
            frame = "" if meta.frame is None else str(meta.frame)
            self._scores.writerow(
                [
                    meta.path,
                    frame,
                    meta.study_uid,
                    meta.series_uid,
                    meta.sop_uid,
                    f"{scores[i]:.6g}",
                    *(f"{comp[name]:.6g}" for name in self.component_names),
                    int(flags[i]),
                ]
            )
            names = tuple(f"{row:07d}_{kind}.png" for kind in ("input", "recon", "heat"))
            entry = (float(scores[i]), -row, meta.path, frame, bool(flags[i]), names[0])
            if len(self._top) < self.max_table_rows:
                heapq.heappush(self._top, entry)
                dropped = None
            else:
                dropped = heapq.heappushpop(self._top, entry)
            if dropped is not entry:
                _save_png(inputs[i], self.thumb_dir / names[0])
                if dropped is not None and not dropped[4]:  # a flagged image's card keeps it
                    (self.thumb_dir / dropped[5]).unlink(missing_ok=True)
            if flags[i]:
                if dropped is entry:  # flagged but below the table's cut: its card needs it
                    _save_png(inputs[i], self.thumb_dir / names[0])
                _save_png(reconstructions[i], self.thumb_dir / names[1])
                _save_png(
                    heatmap_overlay(inputs[i], residuals[i], self.heatmap_vmax),
                    self.thumb_dir / names[2],
                )
                self._flagged.append(_Flagged(float(scores[i]), row, meta, comp, names))
        self._scores_fh.flush()

    def add_errors(self, errors: Sequence[ImageReadError]) -> None:
        """Record files (or frames) that could not be read; the batch goes on."""
        for err in errors:
            self._errors.append(err)
            self._failed_files.add(err.path)
            frame = "" if err.frame is None else str(err.frame)
            self._errors_csv.writerow([err.path, frame, err.reason, err.message])
        self._errors_fh.flush()

    def close(self) -> ReportSummary:
        """Close the CSV files and write index.html."""
        self._scores_fh.close()
        self._errors_fh.close()
        (self.out_dir / "index.html").write_text(self._render(), encoding="utf-8")
        flagged = sorted(self._flagged, key=lambda f: (-f.score, f.row))
        return ReportSummary(
            out_dir=self.out_dir,
            scored=self._rows,
            flagged=len(self._flagged),
            errors=len(self._errors),
            failed_files=len(self._failed_files),
            threshold=self.threshold,
            flagged_paths=[f.meta.path for f in flagged],
        )

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._scores_fh.closed:
            self.close()

    # -----------------------------------------------------------------------------------------

    def _render(self) -> str:
        esc = html.escape
        flagged = sorted(self._flagged, key=lambda f: (-f.score, f.row))
        stops = ", ".join(
            "rgb({},{},{}) {}%".format(
                *(int(v * 255) for v in _colormap(np.array([t]))[0]), int(t * 100)
            )
            for t in np.linspace(0.0, 1.0, 6)
        )
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(self.title)}</title>",
            f"<style>{_CSS}.bar{{background:linear-gradient(to right,{stops})}}</style>",
            "</head><body>",
            f"<h1>{esc(self.title)}</h1>",
            '<p class="summary">',
            f"<b>{self._rows}</b> images scored · <b>{len(flagged)}</b> flagged "
            f"(score &gt; threshold <b>{self.threshold:.6g}</b>) · "
            f"<b>{len(self._errors)}</b> unreadable"
            + (f" · model {esc(self.model)}" if self.model else "")
            + "</p>",
            f'<p class="legend">{esc(self.heatmap_label)}: '
            f'<span class="bar"></span> 0 … {self.heatmap_vmax:g} (fixed scale, model space)</p>',
        ]
        if self.notice:
            parts.append(f'<p class="notice"><b>Note:</b> {esc(self.notice)}</p>')
        if self._errors:
            parts.append(f'<h2 id="errors">Unreadable files ({len(self._errors)})</h2>')
            parts.append(
                "<table><tr><th>path</th><th>frame</th><th>reason</th><th>message</th></tr>"
            )
            for err in self._errors:
                frame = "" if err.frame is None else str(err.frame)
                parts.append(
                    f"<tr class='err'><td>{esc(err.path)}</td><td>{frame}</td>"
                    f"<td>{esc(err.reason)}</td><td>{esc(err.message)}</td></tr>"
                )
            parts.append("</table>")
        parts.append(f'<h2 id="flagged">Flagged images ({len(flagged)}), highest score first</h2>')
        if not flagged:
            parts.append("<p>No image scored above the threshold.</p>")
        for rank, f in enumerate(flagged, start=1):
            parts.append(self._card(rank, f))
        top = sorted(self._top, key=lambda e: (-e[0], -e[1]))
        shown = (
            f"top {len(top)} of {self._rows} (all rows are in scores.csv)"
            if self._rows > len(top)
            else f"{len(top)}"
        )
        parts.append(f'<h2 id="all">All images by score ({shown})</h2>')
        parts.append(
            "<table><tr><th>#</th><th>input</th><th>path</th><th>frame</th><th>score</th>"
            "<th></th></tr>"
        )
        for rank, (score, _, path, frame, flag, thumb) in enumerate(top, start=1):
            cls = " class='flag'" if flag else ""
            mark = "anomaly" if flag else ""
            parts.append(
                f"<tr{cls}><td>{rank}</td><td><img src='thumbs/{thumb}' alt='input of "
                f"{esc(path)}' width='{ROW_THUMB_PX}' height='{ROW_THUMB_PX}'></td>"
                f"<td>{esc(path)}</td><td>{frame}</td><td>{score:.6g}</td><td>{mark}</td></tr>"
            )
        parts.append("</table></body></html>")
        return "\n".join(parts)

    def _card(self, rank: int, f: _Flagged) -> str:
        esc = html.escape
        meta = f.meta
        label = esc(meta.path) + ("" if meta.frame is None else f" · frame {meta.frame}")
        uids = "".join(
            f"<div class='uid'>{name}: {esc(value)}</div>"
            for name, value in zip(
                UID_COLUMNS, (meta.study_uid, meta.series_uid, meta.sop_uid), strict=True
            )
            if value
        )
        comps = " · ".join(f"{esc(k)} {v:.4g}" for k, v in f.components.items())
        images = "".join(
            f"<figure><img src='thumbs/{name}' alt='{caption} of {esc(meta.path)}' "
            f"width='{THUMB_PX}' height='{THUMB_PX}'><figcaption>{caption}</figcaption></figure>"
            for name, caption in zip(
                f.thumbs, ("input", "reconstruction", self.heatmap_caption), strict=True
            )
        )
        return (
            f"<section class='card' data-path='{esc(meta.path)}'>"
            f"<h3>#{rank} {label}</h3>"
            f"<div class='score'>score <b>{f.score:.6g}</b>"
            f" &gt; threshold {self.threshold:.6g}"
            f"<span class='comps'>{comps}</span></div>{uids}"
            f"<div class='imgs'>{images}</div></section>"
        )


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}"
    "h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin-top:28px}"
    "h3{font-size:14px;margin:0 0 4px;word-break:break-all}"
    ".summary,.legend{font-size:14px}.bar{display:inline-block;width:160px;height:12px;"
    "vertical-align:middle;border:1px solid #999}"
    ".card{display:inline-block;vertical-align:top;background:#fff;border:1px solid #ddd;"
    "border-left:4px solid #c0392b;border-radius:4px;padding:10px;margin:6px;width:380px}"
    ".score{font-size:13px}.comps{display:block;color:#666;font-size:12px}"
    ".uid{font-size:11px;color:#555;word-break:break-all}"
    ".imgs{display:flex;gap:6px;margin-top:6px}figure{margin:0;text-align:center}"
    "img{image-rendering:pixelated;background:#000;border:1px solid #ccc}"
    "figcaption{font-size:11px;color:#555}"
    "table{border-collapse:collapse;font-size:12px;background:#fff}"
    "td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}"
    "tr.flag td{background:#fdecea}tr.err td{background:#fff4e5}"
    ".notice{background:#fff4e5;border:1px solid #e0a040;padding:8px;font-size:14px}"
)


def write_report(
    out_dir: str | Path,
    metas: Sequence[ImageMeta],
    inputs: np.ndarray,
    reconstructions: np.ndarray,
    residuals: np.ndarray,
    scores: np.ndarray,
    components: dict[str, np.ndarray],
    threshold: float,
    errors: Sequence[ImageReadError] = (),
    **kwargs: object,
) -> ReportSummary:
    """Whole-array convenience wrapper around :class:`ReportWriter` (one batch)."""
    with ReportWriter(out_dir, threshold, list(components), **kwargs) as writer:
        flags = exceeds(scores, threshold)
        writer.add(metas, inputs, reconstructions, residuals, scores, components, flags)
        writer.add_errors(errors)
        return writer.close()


def report_folder(
    bundle: Any,
    source: str | Path,
    out_dir: str | Path,
    batch_size: int = 256,
    dicom_window: tuple[float, float] | None = None,
    on_file_done: Callable[[Path], None] | None = None,
    paths: Sequence[Path] | None = None,
) -> ReportSummary:
    """Render the report of every image under ``source`` (scored by
    ``anomaly.imaging.scoring``) to ``out_dir``.

    Memory stays bounded by one batch: files are decoded lazily, CSV rows and thumbnails are
    written per batch. ``paths`` (from :func:`discover_files`) may be passed in when the
    caller already listed them, e.g. to size a progress bar.
    """
    files = list(paths) if paths is not None else discover_files(source)
    names = _component_names(bundle)
    model = f"{bundle.model_name} {bundle.model_version}"
    title = f"Imaging anomaly report: {source}"
    heatmap = _heatmap_scale(bundle)
    with ReportWriter(
        out_dir,
        bundle.threshold,
        names,
        title=title,
        model=model,
        notice=stability_notice(bundle),
        **heatmap,
    ) as writer:
        for scored in score_folder(bundle, files, batch_size, dicom_window, on_file_done):
            comps = scored.components
            if comps is not None:
                writer.add(
                    scored.metas,
                    scored.images,
                    comps.reconstructed,
                    comps.contributions,
                    comps.score,
                    {n: comps.component(n) for n in names},
                    scored.flags,
                )
            writer.add_errors(scored.errors)
        return writer.close()


def _heatmap_scale(bundle: Any) -> dict[str, Any]:
    """How to colour the bundle's contributions.

    Models whose score is the memory-bank distances (and the discriminator's anomaly map)
    spread their score over the image (mean
    of the map = the positive part of the score): full colour is a pixel carrying eight
    times the alert threshold's average (at four, the MNIST example report saturated most of
    a flagged digit), so a flagged image shows where its score sits. Older,
    residual-only models keep the pixel-unit residual scale.
    """
    weights = bundle.manifest.get("score", {}).get("weights", {})
    spread = ("encoder_knn", "discriminator_knn", "discriminator_map", "discriminator_rotation")
    if any(weights.get(n) for n in spread):
        return {
            "heatmap_vmax": round(8.0 * max(float(bundle.threshold), 0.5), 3),
            "heatmap_caption": "score heatmap",
            "heatmap_label": "Score heatmap (where the image differs from its nearest "
            "normal training images and where the discriminator's anomaly map fires; score "
            "units per pixel)",
        }
    return {}


def _component_names(bundle: Any) -> list[str]:
    """Scalar component names recorded in the manifest: the CSV header is written up front."""
    return list(bundle.manifest.get("score", {}).get("components", ["reconstruction"]))
