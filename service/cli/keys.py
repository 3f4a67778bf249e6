"""`python -m service keys create|list|revoke`: manage the hashed keys file.

`create` prints the new secret once, on stdout, and stores only its SHA-256; `list` shows names,
scopes and state, never secrets; `revoke` marks a key revoked (running workers stop accepting it
within a second, see `service.keys.KeyRing`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli.common import CommandError, load_settings
from service.keys import SCOPES, KeysFileError, create_key, read_keys_file, revoke_key

FILE_ENV = "FACEVERIFY_API_KEYS_FILE"


def add_parser(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="create, list or revoke API keys (hashed keys file)")
    keys.set_defaults(run=run)
    keys.add_argument("--file", type=Path, default=None, help=f"keys file (default: ${FILE_ENV})")
    actions = keys.add_subparsers(dest="keys_action", required=True)
    create = actions.add_parser("create", help="add a key and print its secret once")
    create.add_argument("--name", required=True, help="who or what uses it (shown in audit logs)")
    create.add_argument(
        "--scopes", required=True, help=f"comma-separated, from: {', '.join(SCOPES)}"
    )
    actions.add_parser("list", help="names, scopes, created and revoked times (no secrets)")
    revoke = actions.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")


def run(args: argparse.Namespace) -> int:
    path = args.file or load_settings().api_keys_file
    if path is None:
        raise CommandError(f"give --file PATH or set {FILE_ENV}")
    try:
        if args.keys_action == "create":
            key, secret = create_key(path, args.name, args.scopes.split(","))
            print(secret)
            print(
                f"key {key.name!r} ({', '.join(key.scopes)}) added to {path}; the secret above "
                "is shown only this once",
                file=sys.stderr,
            )
        elif args.keys_action == "list":
            for key in read_keys_file(path):
                state = f"revoked {key.revoked}" if key.revoked else "active"
                print(f"{key.name}\t{','.join(key.scopes)}\tcreated {key.created}\t{state}")
        else:
            key = revoke_key(path, args.name)
            print(f"key {key.name!r} revoked at {key.revoked}", file=sys.stderr)
    except (KeysFileError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    return 0
