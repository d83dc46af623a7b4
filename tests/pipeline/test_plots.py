from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(300)
    labels = (scores > 0.9).astype(int)
    t = np.arange("2026-01-01T00:00", 300, dtype="datetime64[m]")
    for path in (
        plots.score_timeline(tmp_path / "a.png", t, scores, 0.8, labels),
        plots.score_timeline(tmp_path / "b.png", t, scores, 0.8, None),
        plots.score_histogram(tmp_path / "c.png", scores, 0.8, labels),
        plots.score_histogram(tmp_path / "d.png", scores, 0.8),
        plots.pr_curve(tmp_path / "e.png", labels, scores),
    ):
        data = path.read_bytes()
        assert data.startswith(PNG)
        assert len(data) > 5000
