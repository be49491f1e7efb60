"""Did this machine reproduce the committed results? The last step of `make repro`.

It compares the dvc.lock that `dvc repro` just wrote with git HEAD's: the same code, data and
params (every stage's dependency hashes and params) should give the same output hashes. If they
do not, it says how many outputs and cells moved and by how much, and what to compare against
instead: a baseline experiment trained on this machine, so that a delta between two settings is
a normalization delta, not a machine's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from normbench.io import run_main
from normbench.runs import CELL_RECORDS, read_lock

CELL_FIGURE = "final_acc"  # the figure verdicts use (fraction correct)
BASELINE_RECIPE = ("compare against a baseline trained on this machine, not against HEAD: "
                   "`dvc exp run -n baseline` (once: the committed settings, here), then e.g. "
                   "`dvc exp run -S norm=minmax -n minmax` and "
                   "`dvc metrics diff baseline minmax`.")


def _entries(stage: dict, kind: str) -> dict[str, str]:
    return {e["path"]: str(e.get("md5") or e.get("hash")) for e in stage.get(kind) or []}


def _produced(path: str, outs: set[str]) -> bool:
    """Whether ``path`` is a stage's output, inside one, or a folder of outputs."""
    return any(path == o or o.startswith(f"{path}/") or path.startswith(f"{o}/") for o in outs)


def inputs(lock: dict) -> dict[str, object]:
    """Per stage, the hashes of its dependencies that no stage makes (code, external data) and
    its params: what the pipeline's outputs are a function of."""
    outs = set(outputs(lock))
    return {name: ({p: h for p, h in _entries(stage, "deps").items() if not _produced(p, outs)},
                   stage.get("params"))
            for name, stage in lock.items()}


def outputs(lock: dict) -> dict[str, str]:
    """{output path: md5} of every stage."""
    return {path: md5 for stage in lock.values() for path, md5 in _entries(stage, "outs").items()}


@dataclass(frozen=True)
class Moved:
    """A cell whose metrics differ from the committed ones."""

    cell: str
    committed: dict
    here: dict

    def text(self) -> str:
        """"<cell> final_acc +1.23 points, final_loss -0.0100" (this machine's minus HEAD's)."""
        parts = [f"{key} {(self.here[key] - self.committed[key]) * scale:+.{digits}f}{unit}"
                 for key, scale, digits, unit in MOVES
                 if isinstance(self.here.get(key), float)
                 and isinstance(self.committed.get(key), float)
                 and self.here[key] != self.committed[key]]
        return f"{self.cell} {', '.join(parts) or 'in other metrics only'}"


# What a moved cell's line shows: (metric, scale, digits, unit).
MOVES = ((CELL_FIGURE, 100, 2, " points"), ("final_loss", 1, 4, ""))


def cells_of(metrics: dict) -> dict[str, dict]:
    """The per-cell entries of a cell-records file (those with ``final_acc``)."""
    return {c: m for c, m in metrics.items() if isinstance(m, dict) and CELL_FIGURE in m}


def moved_cells(committed: dict, here: dict) -> list[Moved]:
    """Cells present in both whose metrics differ in any value."""
    theirs = cells_of(committed)
    return [Moved(cell, theirs[cell], m) for cell, m in sorted(cells_of(here).items())
            if cell in theirs and m != theirs[cell]]


def machines(committed: dict, here: dict) -> str:
    """Where HEAD's cells and this machine's ran (their ``ran_on``), in words; "" if unknown."""
    kinds = [sorted({str(m["ran_on"]) for m in cells_of(records).values() if "ran_on" in m})
             for records in (committed, here)]
    if not all(kinds):
        return ""
    head, ours = ("; ".join(f"`{k}`" for k in side) for side in kinds)
    if kinds[0] != kinds[1]:
        return f" HEAD's cells ran on {head}, this machine's on {ours}: another kind of machine."
    beyond = ("GPU results are recorded, not pinned" if any(" cuda " in k for k in kinds[1])
              else "a difference the CPU pins do not cover (docs/reproducibility.md)")
    return f" HEAD's cells ran on the same kind of machine, {ours}: {beyond}."


def verdict(committed_lock: dict, lock: dict, committed_metrics: dict, metrics: dict) -> str:
    """What `make repro` says at its end, in words."""
    if not committed_lock:
        return "HEAD has no dvc.lock: there are no committed results to reproduce."
    changed_inputs = sorted(s for s, v in inputs(lock).items()
                            if inputs(committed_lock).get(s) != v)
    if changed_inputs:
        return (f"Not a reproduction test: {len(changed_inputs)} stage(s) ran with other code, "
                f"data or params than HEAD's dvc.lock records ({', '.join(changed_inputs[:5])}"
                f"{', ...' if len(changed_inputs) > 5 else ''}): the workspace has changes "
                "(commit or stash them, then `make repro` again), or HEAD's dvc.lock is stale.")
    ours, theirs = outputs(lock), outputs(committed_lock)
    differ = sorted(p for p in theirs if ours.get(p) != theirs[p])
    if not differ:
        return (f"Reproduced: all {len(theirs)} outputs of the committed dvc.lock have their "
                "committed hashes on this machine, so `dvc metrics diff` against HEAD compares "
                "like with like.")
    moved = moved_cells(committed_metrics, metrics)
    return (f"NOT reproduced on this machine: {len(differ)} of {len(theirs)} outputs differ from "
            f"the committed dvc.lock ({', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''})"
            f"; {len(moved)} of {len(cells_of(metrics))} cells moved"
            f"{': ' + '; '.join(m.text() for m in moved) if moved else ''}."
            f"{machines(committed_metrics, metrics)} "
            "`dvc metrics diff` against HEAD would mix this machine's drift into every delta, so "
            f"{BASELINE_RECIPE}")


# pragma: no mutate start (I/O: reads git and the workspace)
def _git_json(repo: Path, path: str) -> dict:
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=repo, capture_output=True,
                          text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    here = args.repo / CELL_RECORDS  # every cell's record, as the report stage wrote it
    metrics = json.loads(here.read_text()) if here.is_file() else {}
    print(verdict(read_lock(args.repo, "HEAD"), read_lock(args.repo, None),
                  _git_json(args.repo, CELL_RECORDS), metrics))


if __name__ == "__main__":
    run_main(main)
