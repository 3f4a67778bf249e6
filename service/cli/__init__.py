"""The command line, one parser: `python -m service [serve]`, `fetch-models NAME`,
`check-pack [DIR]`, `gallery export|import|migrate|enrol|report`, `keys create|list|revoke`,
`calibrate --pack DIR --pairs SOURCE`, `batch-detector SRC DST --photos DIR`,
`quantize-recognizer SRC_PACK DST_PACK --photos DIR`.

Each command group is one module with `add_parser(s)` and a `run(args)` that returns the exit
status or raises `CommandError`, which `main` prints as one `faceverify: ...` line (exit 2).
"""

from __future__ import annotations

import argparse

from service.cli import calibrate, gallery, keys, packs, serve
from service.cli.common import CommandError, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceverify", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    serve.add_parser(commands)
    packs.add_parsers(commands)
    gallery.add_parser(commands)
    keys.add_parser(commands)
    calibrate.add_parser(commands)
    parser.set_defaults(run=serve.run)  # no command: serve
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CommandError as exc:
        return fail(str(exc))
