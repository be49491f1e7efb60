"""`dvc plots show` / `dvc plots diff` pages: no remote script, and lines and the report's weight
figures drawn in a real browser with no network (vega inlined by the .dvc/config html_template
that `make setup` writes)."""

import json
import re
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY_CELL, copy_project, require_program, sh
from PIL import Image

# The Chromium tests stay on one pytest-xdist worker (one module): never two browsers at
# once, each a handful of processes and hundreds of MiB, and the module's repo is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(name="chromium")]

# vega's default category colours: the first revision's lines, the second's.
BLUE, ORANGE = (0x4C, 0x78, 0xA8), (0xF5, 0x85, 0x18)
# The weight figure of the tiny project's one cell (an image plot of dvc.yaml), and matplotlib's
# tab:red, the colour of its drift lines: a colour that only the weight figure draws here.
WEIGHT_FIGURE = f"report/weights/{TINY_CELL}.png"
TAB_RED = (0xD6, 0x27, 0x28)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, reproduced_tiny_project) -> Path:
    """A tiny project reproduced and committed (the session's copy), plus one experiment:
    norm=minmax."""
    template = ROOT / ".dvc" / "plots" / "offline.html"
    assert template.is_file(), f"{template} missing: run `make setup` (it writes the template)"
    repo = tmp_path_factory.mktemp("plots")
    copy_project(reproduced_tiny_project, repo)
    sh(repo, "dvc", "exp", "run", "-n", "minmax", "-S", "norm=minmax")
    return repo


class Scripts(HTMLParser):
    """Every <script>'s src (None when inline) and every other tag's remote href/src."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str | None] = []
        self.remote: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        if tag == "script":
            self.sources.append(attrs.get("src"))
        for key in ("src", "href"):
            if tag != "a" and str(attrs.get(key, "")).startswith(("http:", "https:", "//")):
                self.remote.append(f"<{tag} {key}={attrs[key]}>")


def test_plots_page_references_no_remote_script(repo):
    sh(repo, "dvc", "plots", "show", "-o", "show")
    page = (repo / "show" / "index.html").read_text()
    parser = Scripts()
    parser.feed(page)
    assert parser.remote == [] and set(parser.sources) == {None}  # all inline
    assert "window.vegaEmbed=" in page and "cdn.jsdelivr.net" not in page
    assert page.count("vegaEmbed('#") == 6  # one chart per curve plot of dvc.yaml


def screenshot(page: Path, png: Path, size: str = "1000,1400") -> np.ndarray:
    """Headless Chromium with every host name unresolvable: what an air-gapped machine sees.

    ``size`` is the window, "width,height" in CSS pixels (one device pixel each).
    """
    chromium = require_program("chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
             "--force-device-scale-factor=1", f"--screenshot={png}", f"--window-size={size}",
             page.as_uri()],
            capture_output=True, timeout=120, check=True)
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def pixels_of(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((np.abs(image - colour).sum(axis=-1) < 40).sum())


def test_show_and_diff_draw_lines_offline_in_chromium(repo, tmp_path):
    sh(repo, "dvc", "plots", "show", "-o", "show")
    show = screenshot(repo / "show" / "index.html", tmp_path / "show.png")
    assert pixels_of(show, BLUE) > 500 and pixels_of(show, ORANGE) == 0  # one revision, drawn

    sh(repo, "dvc", "plots", "diff", "HEAD", "minmax", "-o", "diff")
    diff_page = (repo / "diff" / "index.html").read_text()
    assert '"rev": "minmax"' in diff_page and '"rev": "HEAD"' in diff_page
    diff = screenshot(repo / "diff" / "index.html", tmp_path / "diff.png")
    assert pixels_of(diff, BLUE) > 500 and pixels_of(diff, ORANGE) > 500  # a colour per revision


def test_plots_have_unit_titles_and_a_panel_per_model_and_dataset(repo):
    out = json.loads(sh(repo, "dvc", "plots", "diff", "HEAD", "minmax", "--json"))
    spec = out["data"]["Test accuracy"][0]["content"]
    assert spec["facet"]["field"] == "panel" and "datum.model" in spec["transform"][0]["calculate"]
    encoding = spec["spec"]["encoding"]
    assert encoding["color"]["field"] == "rev" and encoding["detail"]["field"] == "seed"
    assert encoding["y"]["title"] == "test accuracy (fraction correct, 0-1)"
    assert encoding["x"]["title"] == "epoch (0 = before training)"
    assert {v["rev"] for v in spec["data"]["values"]} == {"HEAD", "minmax"}
    loss = out["data"]["Test loss"][0]["content"]["spec"]["encoding"]["y"]["title"]
    assert "cross-entropy" in loss


def git_bytes(repo: Path, rev: str, path: str) -> bytes:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True,
                          check=True).stdout


def test_diff_sets_the_weight_figures_of_both_revisions_side_by_side_offline(repo, tmp_path):
    sh(repo, "dvc", "plots", "diff", "HEAD", "minmax", "-o", "diff")
    page = (repo / "diff" / "index.html").read_text()
    # DVC's image plot: one box per file, holding each revision's caption and <img> in a row.
    assert page.count(f"<p>{WEIGHT_FIGURE}</p>") == 1
    box = page.split(f"<p>{WEIGHT_FIGURE}</p>", 1)[1]  # the project's only image plot
    shown = dict(re.findall(r'<p>([^<]+)</p>\s*<img src="([^"]+)">', box))
    assert list(shown) == ["HEAD", "minmax"], box
    exp_refs = sh(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps").split()
    minmax = next(ref for ref in exp_refs if ref.endswith("/minmax"))
    expected = {"HEAD": git_bytes(repo, "HEAD", WEIGHT_FIGURE),
                "minmax": git_bytes(repo, minmax, WEIGHT_FIGURE)}
    assert expected["HEAD"] != expected["minmax"]  # another norm, other weights
    for rev, src in shown.items():  # each <img> is that revision's own figure, copied locally
        assert (repo / "diff" / src).read_bytes() == expected[rev]

    # Drawn: the page of this plot alone (no charts above it), in a window wide enough for both
    # figures; DVC centres the row, so each half of the window holds all the drift-line pixels
    # of its revision's figure.
    sh(repo, "dvc", "plots", "diff", "HEAD", "minmax", "--targets", WEIGHT_FIGURE, "-o", "images")
    figures = [np.asarray(Image.open(repo / "diff" / shown[rev]).convert("RGB")).astype(int)
               for rev in ("HEAD", "minmax")]
    height, width = figures[0].shape[:2]
    shot = screenshot(repo / "images" / "index.html", tmp_path / "images.png",
                      f"{2 * width + 200},{height + 300}")
    middle = shot.shape[1] // 2
    for half, figure in zip((shot[:, :middle], shot[:, middle:]), figures):
        red = pixels_of(figure, TAB_RED)
        assert red > 500 and pixels_of(half, TAB_RED) >= 0.95 * red
