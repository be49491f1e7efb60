"""`dvc plots show` / `dvc plots diff` pages: no remote script, and lines drawn in a real browser
with no network (vega inlined by the .dvc/config html_template that `make setup` writes)."""

import json
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, require_program, sh, tiny_project
from PIL import Image

pytestmark = pytest.mark.slow

# vega's default category colours: the first revision's lines, the second's.
BLUE, ORANGE = (0x4C, 0x78, 0xA8), (0xF5, 0x85, 0x18)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A tiny project reproduced and committed, plus one experiment: norm=minmax."""
    template = ROOT / ".dvc" / "plots" / "offline.html"
    assert template.is_file(), f"{template} missing: run `make setup` (it writes the template)"
    repo = tmp_path_factory.mktemp("plots")
    tiny_project(repo)
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
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
    assert page.count("vegaEmbed('#") == 4  # one chart per plot of dvc.yaml


def screenshot(page: Path, png: Path) -> np.ndarray:
    """Headless Chromium with every host name unresolvable: what an air-gapped machine sees."""
    chromium = require_program("chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
             f"--screenshot={png}", "--window-size=1000,1400", page.as_uri()],
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
