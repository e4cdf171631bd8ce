"""``python -m refimpl.core``: the model lifecycle diagram (Mermaid) drawn from the table."""

from __future__ import annotations

import argparse
import sys

from .lifecycle import mermaid_diagram


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refimpl.core",
        description="Print the model lifecycle diagram, drawn from TRANSITIONS in "
                    "refimpl/core/lifecycle.py, as Mermaid source in a Markdown code block: "
                    "paste it into docs/LIFECYCLE.md, or view it on any Markdown page that "
                    "renders Mermaid (GitHub, mermaid.live).")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the block to FILE instead of printing it")
    args = parser.parse_args(argv)
    block = f"```mermaid\n{mermaid_diagram()}\n```\n"
    if args.output is None:
        sys.stdout.write(block)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(block)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: error: cannot write {args.output}: "
                       f"{exc.strerror or exc}\n")
    print(f"lifecycle diagram written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
