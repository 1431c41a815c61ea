"""A real headless browser for tests and benchmarks: render a report, check it is not blank."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def screenshot(
    html_path: str | Path,
    png_path: str | Path,
    width: int = 1280,
    height: int = 900,
    chromium: str = CHROMIUM,
    timeout: float = 90.0,
) -> Path:
    """Render ``html_path`` in headless Chromium (network off, fresh profile) to a PNG."""
    html_path = Path(html_path).resolve()
    png_path = Path(png_path).resolve()
    if shutil.which(chromium) is None:
        raise FileNotFoundError(f"{chromium} not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png_path}",
            html_path.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not png_path.exists():
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return png_path


def image_is_blank(png_path: str | Path, min_std: float = 4.0, min_colors: int = 16) -> bool:
    """True when a screenshot is (nearly) one flat colour, i.e. nothing was rendered."""
    with Image.open(png_path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    colors = np.unique(rgb.reshape(-1, 3)[:: max(1, rgb.size // 300_000)], axis=0).shape[0]
    return float(rgb.std()) < min_std or colors < min_colors
