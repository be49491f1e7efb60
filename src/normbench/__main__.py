"""`python -m normbench <command> [options]`: the project's commands outside the pipeline.

Each command is a module of its own that also runs as `python -m normbench.<module>`; the make
targets call them. `python -m normbench <command> --help` gives the command's options.
"""

from __future__ import annotations

import importlib
import sys

from normbench.io import run_main

# command -> (module, what it does); the make target that runs it is in brackets.
COMMANDS = {
    "compare": ("compare", "tables and verdicts across HEAD's experiments [make compare]"),
    "study": ("study", "every setting with seeds as DVC experiments, then compare [make study]"),
    "reproduction": ("reproduction", "did this machine reproduce dvc.lock's hashes? [make repro]"),
    "weights": ("fetch_weights", "pre-fetch the models' ImageNet weights [make weights]"),
    "plots-page": ("plots_page", "write the offline `dvc plots` page template [make setup]"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    return (f"usage: python -m normbench <command> [options]\n\ncommands:\n{rows}\n\n"
            "python -m normbench <command> --help: the command's options")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return 2
    module = COMMANDS[argv[0]][0]
    # Each main() parses sys.argv[1:]; argv[0] becomes its usage line's name for the command.
    sys.argv = [f"python -m normbench {argv[0]}", *argv[1:]]
    # As `python -m normbench.<module>` runs it: a known failure is one line naming the fix,
    # and SIGTERM cleans up (io.run_main).
    run_main(importlib.import_module(f"normbench.{module}").main)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
