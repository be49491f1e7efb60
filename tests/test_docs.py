"""README.md and docs/*.md name only what exists: make targets and variables, `python -m`
modules, params keys, files and links. A renamed target, param or file fails here, not in a
reader's terminal. Reads text files only: fast, no DVC, no torch."""

import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

# The pages of docs/, each one topic (issue 22).
PAGES = ("pipeline", "statistics", "pretraining", "datasets", "gpu", "cluster", "remote",
         "architecture", "reference", "reproducibility")
# Paths checked against the checkout: the project's source folders and top-level files...
SOURCE_ROOTS = ("src/", "stages/", "tests/", "bench/", "docs/", ".dvc/")
TOP_FILES = ("Makefile", "README.md", "params.yaml", "dvc.yaml", "dvc.lock", "requirements.txt",
             "pyproject.toml")
# ...except what running the project writes there (results, DVC's own working files, the page
# template that `make setup` writes).
GENERATED = ("bench/results", ".dvc/tmp", ".dvc/cache", ".dvc/plots/offline.html",
             ".dvc/config.local")  # written by make setup
# Where a bare script or module name (`train.py`, `gpu_session.py`) must be found.
CODE_DIRS = ("src/normbench", "stages", "bench", "tests")
# Dotted names in backticks that are not params keys: Python modules and attributes, config keys
# of DVC. Any other dotted lowercase name must be a key of params.yaml.
NOT_PARAMS = ("normbench", "torch", "torchvision", "np", "dvc", "plots", "core")
FILE_SUFFIX = re.compile(r"\.(py|sh|md|yaml|yml|lock|json|jsonl|csv|tsv|png|npy|npz|pt|pth|"
                         r"html|txt|toml|log|gz|whl|mat|zip)$")
PLACEHOLDER = re.compile(r"<[^>]*>|\$\{[^}]*\}|\*")  # <cell>, ${item}, globs: any name


def code_texts(markdown: str) -> list[str]:
    """Every fenced block's lines and every inline code span, in order."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.S | re.M)
    lines = [line for block in blocks for line in block.splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", prose)


def makefile() -> tuple[set[str], set[str]]:
    """The Makefile's targets and variables."""
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))
    variables = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*[?:+]?=", text, flags=re.M))
    return targets, variables


def has_key(params: dict, key: str) -> bool:
    """Whether a dotted key resolves in params.yaml; a placeholder part matches any key."""
    nodes = [params]
    for part in key.split("."):
        nodes = [n[k] for n in nodes if isinstance(n, dict) for k in n
                 if k == part or PLACEHOLDER.fullmatch(part)]
    return bool(nodes)


def path_exists(path: str) -> bool:
    """A path, or for one with a placeholder (``stages/<x>.py``) the folder before it."""
    cut = PLACEHOLDER.search(path)
    if cut:
        path = path[:cut.start()].rpartition("/")[0]
    return (ROOT / path).exists()


def make_problems(text: str, targets: set[str], variables: set[str]) -> list[str]:
    """`make <target> VAR=...` commands whose target or variable the Makefile lacks."""
    found = []
    for command in re.findall(r"(?:^\s*|[;&|]\s*|\$ )make\b([^;&|#]*)", text):
        goals = [w for w in command.split() if "=" not in w and not w.startswith("-")]
        if goals and re.fullmatch(r"[\w.-]+", goals[0]) and goals[0] not in targets:
            found.append(f"make target {goals[0]!r}")
        found += [f"make variable {v!r}" for v in re.findall(r"\b([A-Z][A-Z0-9_]*)=", command)
                  if v not in variables]
    return found


def param_keys(text: str) -> list[str]:
    """The params keys ``text`` names: `-S key=value`, and a whole span that is a dotted key
    (`train.epochs`, `speed.compile: default`) rather than a file, module or layer name."""
    keys = re.findall(r"(?:-S|--set|SET=)\s*['\"]?([a-z_][\w.<>${}-]*)=", text)
    span = text.strip()
    if ": " in span and " " not in span.split(": ")[0]:
        span = span.split(": ")[0]
    parts = span.split(".")
    if re.fullmatch(r"[a-z_][a-z0-9_]*(\.([a-z0-9_]+|<[^>]+>|\$\{[^}]+\}))+", span) \
            and not FILE_SUFFIX.search(span) and parts[0] not in NOT_PARAMS \
            and not any(p.isdigit() for p in parts):  # `layer4.1.conv2`: a layer's name
        keys.append(span)
    return keys


def path_problems(text: str) -> list[str]:
    """Paths in the project's source folders, and bare script names, that do not exist."""
    found = []
    for token in re.findall(r"[\w./<>${}*-]+", text):
        token = token.rstrip(".")
        checked = token.startswith(SOURCE_ROOTS) or token in TOP_FILES
        if checked and not token.startswith(GENERATED) and not path_exists(token):
            found.append(f"path {token!r}")
        if re.fullmatch(r"[\w-]+\.py", token) and not any(
                (ROOT / d / token).is_file() for d in CODE_DIRS):
            found.append(f"module file {token!r}")
    return found


def problems(markdown: str, where: Path) -> list[str]:
    """What ``markdown`` (a file in folder ``where``) names that the repository does not have."""
    targets, variables = makefile()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    found = []
    for text in code_texts(markdown):
        found += make_problems(text, targets, variables)
        for module in re.findall(r"python3? -m (normbench(?:\.\w+)*)", text):
            base = ROOT / "src" / module.replace(".", "/")
            if not (base.with_suffix(".py").is_file() or base.is_dir()):
                found.append(f"module {module!r}")
        found += [f"param {k!r}" for k in param_keys(text) if not has_key(params, k)]
        found += path_problems(text)
    for link in re.findall(r"\]\(([^)\s]+)\)", markdown):  # relative links and images
        target = link.split("#")[0]
        if target and not re.match(r"[a-z]+:", target) and not (where / target).exists():
            found.append(f"link {link!r}")
    return found


def docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_name_a_page_gives_exists(doc):
    assert problems(doc.read_text(), doc.parent) == []


def test_each_topic_has_a_page_that_says_first_what_it_is_for():
    for page in PAGES:
        text = (ROOT / "docs" / f"{page}.md").read_text()
        title, _, rest = text.partition("\n")
        first = rest.strip().split("\n\n")[0]
        assert title.startswith("# ") and first[:1].isalpha() and first.endswith("."), page


def test_the_checker_finds_made_up_names(tmp_path):
    (tmp_path / "real.md").write_text("")
    fake = """
```bash
make study NORMS="dataset" FOO=1     # a real target, a made-up variable
make flyaway
PYTHONPATH=src python -m normbench.nowhere
python stages/train.py && python stages/nothing.py
dvc exp run -S train.epochs=3 -S train.epoch=3
```
`train.epochs` and `start.pretrained.norm` exist, `start.pretrained.nrom` does not, nor does
`speed.turbo: on`; `data.<name>` and `metrics.json` and `normbench.io` are fine.
See `src/normbench/runs.py`, `src/normbench/runz.py`, `tests/<file>.py`, `stages/<x>.py`,
`study.py`, `gpu_session.py`, `studies.py`,
`bench/results/anything.md`, [a page](real.md), [another](missing.md), [web](https://dvc.org).
"""
    assert problems(fake, tmp_path) == [
        "make variable 'FOO'", "make target 'flyaway'", "module 'normbench.nowhere'",
        "path 'stages/nothing.py'", "param 'train.epoch'", "param 'start.pretrained.nrom'",
        "param 'speed.turbo'", "path 'src/normbench/runz.py'", "module file 'studies.py'",
        "link 'missing.md'"]


def test_the_architecture_page_lists_every_module_of_the_library():
    table = re.findall(r"^\| `([\w]+\.py)` \|", (ROOT / "docs" / "architecture.md").read_text(),
                       flags=re.M)
    modules = sorted(p.name for p in (ROOT / "src" / "normbench").glob("*.py"))
    assert sorted(table) == modules
