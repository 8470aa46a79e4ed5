"""Command line: ``python -m amhelpers <group> ...``.

Each group lives in its own module, imported only when used (so ``tokenizer`` does not
import torch). A module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .io import describe_os_error

GROUPS: dict[str, tuple[str, str]] = {
    "corpus": ("amhelpers.corpus", "fetch or check HornMT, print splits and phrases"),
    "tokenizer": ("amhelpers.tokenizer", "extend and verify a SentencePiece tokenizer"),
    "speech": ("amhelpers.speech", "synthesise phrases with espeak-ng"),
    "train": ("amhelpers.train", "train MiniVoice with the IndexTTS2 trainer's flags"),
    "checkpoint": ("amhelpers.checkpoint", "grow text tables for an extended tokenizer, inspect checkpoints"),
    "diagnose": ("amhelpers.diagnose", "per-row statistics, drift, plateau and ranked causes for a checkpoint"),
    "course": ("amhelpers.course", "run the course notebooks in order with papermill"),
    "runs": ("amhelpers.runs", "run notebook 05 once per point of a grid with papermill"),
    "doctor": ("amhelpers.doctor", "pre-flight check of a real training setup, ranked findings"),
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen group. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m amhelpers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", metavar="GROUP")
    for name, (_, helptext) in GROUPS.items():
        sub.add_parser(name, help=helptext, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in GROUPS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"python -m amhelpers: unknown group {argv[0]!r}; choose from {', '.join(GROUPS)}",
                  file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    module = importlib.import_module(GROUPS[argv[0]][0])
    group_parser = argparse.ArgumentParser(prog=f"python -m amhelpers {argv[0]}",
                                           description=GROUPS[argv[0]][1])
    module.add_arguments(group_parser)
    args = group_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except OSError as err:  # raised by the OS (has a filename) or by us with a message
        print(f"error: {describe_os_error(err) if err.filename is not None else err}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
