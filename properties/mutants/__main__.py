"""``python -m properties.mutants``: list the zoo's mutants, or run a command with some applied.

    python -m properties.mutants                          # the list: id, layer, bug
    python -m properties.mutants Z9 -- python -m refimpl  # a router (and its children) with Z9
"""

from __future__ import annotations

import argparse
import os
import sys

from . import MUTANTS, UnknownMutant, environment, lookup


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m properties.mutants",
        description="Without a command: list the bug-zoo mutants. With ZN ... -- COMMAND: run "
                    "COMMAND with the mutants applied in every Python process it starts.")
    parser.add_argument("mutants", nargs="*", metavar="ZN")
    args = parser.parse_args(argv)
    try:
        lookup(args.mutants)
    except UnknownMutant as exc:
        parser.error(str(exc))
    if not command:
        for m in lookup(args.mutants or list(MUTANTS)):
            print(f"{m.id:4} {m.layer:9} {m.bug}")
        return 0
    env = environment(args.mutants)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
