"""The HTML page template of `dvc plots show` / `dvc plots diff`, with vega inlined.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so on a machine without
network it stays blank. This template (named by `plots.html_template` in .dvc/config.local, which
`make setup` writes; .dvc/config's own page says to run `make setup`) carries
the three libraries inline, bundled by vl-convert-python, and has no `{scripts}` placeholder, so
DVC adds no CDN tags. DVC fills `{plot_divs}` with one `vegaEmbed(...)` call per plot, which the
bundle provides as a global.

    python -m normbench.plots_page .dvc/plots/offline.html   (`make setup` runs it)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import vl_convert

from normbench.io import atomic_path

# The major version of the `$schema` DVC writes into every spec (vega-lite/v5.json).
VEGA_LITE_VERSION = "5.21"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>normbench: dvc plots</title>
    <!-- vega __VEGA__, vega-lite __VEGA_LITE__, vega-embed __EMBED__, bundled by vl-convert-python:
         no network needed -->
    <script type="text/javascript">
(function () {  // the bundle's top-level names stay private; it sets window.vegaEmbed itself
__BUNDLE__
})();
    </script>
    <style>
        body { font-family: sans-serif; margin: 16px; }
        table { border-spacing: 15px; }
        img { max-width: 100%; height: auto; }  /* weight figures (1870 px) fit the window */
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def page_template() -> str:
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    # DVC fills the page by plain text replacement, and an HTML parser ends a script at "</script".
    for text in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if text in bundle:
            raise RuntimeError(f"the vega bundle contains {text!r}; it cannot be inlined")
    return (PAGE.replace("__VEGA__", vl_convert.get_vega_version())
            .replace("__VEGA_LITE__", VEGA_LITE_VERSION)
            .replace("__EMBED__", vl_convert.get_vega_embed_version())
            .replace("__BUNDLE__", bundle))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", help="the template file that .dvc/config's plots.html_template names")
    out = Path(ap.parse_args().out)
    with atomic_path(out) as tmp:  # an interrupted run leaves no half page for DVC to use
        tmp.write_text(page_template(), encoding="utf8")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
