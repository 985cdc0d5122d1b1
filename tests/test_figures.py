"""``dyno.figures.save_png``: the picture every ``--plot`` writes lands whole or not at all, and the figure
is closed either way (a long session that draws many figures must not keep them all)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from dyno.figures import save_png  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figure() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [1, 0, 1])
    return fig


def test_the_png_is_written_whole_with_the_callers_options_and_the_figure_is_closed(tmp_path):
    fig = _figure()
    path = save_png(fig, tmp_path / "sub" / "f.png", dpi=50)       # the directory is made
    assert path == tmp_path / "sub" / "f.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (200, 150)   # 4 x 3 inches at 50 dpi
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.png"]   # no temporary file left
    assert not plt.fignum_exists(fig.number)


def test_format_wins_over_the_suffix_and_an_old_file_is_replaced(tmp_path):
    path = tmp_path / "figure.bin"
    path.write_bytes(b"old")
    save_png(_figure(), path, format="png", dpi=20, bbox_inches="tight")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.size[0] < 80                          # bbox_inches="tight" trimmed the 4-inch width
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.bin"]


def test_a_failed_save_keeps_the_old_file_leaves_no_temporary_and_still_closes_the_figure(tmp_path):
    path = tmp_path / "f.png"
    path.write_bytes(b"old")
    fig = _figure()
    with pytest.raises(ValueError, match="not-a-format"):
        save_png(fig, path, format="not-a-format")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]
    assert not plt.fignum_exists(fig.number)
