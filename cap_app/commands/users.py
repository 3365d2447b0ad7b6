"""`python -m cap_app users`: the accounts of a server's annotators (the users file, $CAP_USERS).

python -m cap_app users add alice --role admin          # asks for the password twice
printf '%s\\n' "$PASSWORD" | python -m cap_app users add bob --role annotator   # or reads it from stdin
python -m cap_app users list
python -m cap_app users remove bob

A password is read from the terminal (not echoed) or from the first line of stdin, never from the
command line, where other users of the machine and the shell history would see it. The file keeps
only an argon2id hash of it (cap_app/annotate/accounts.py). Start the app with CAP_USERS pointing to the file.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from cap_app.annotate.accounts import ROLES
from cap_app.commands.common import fail

HELP = "add, remove or list the accounts that may annotate (the users file, $CAP_USERS)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("add", "remove", "list"), help="what to do")
    parser.add_argument("name", nargs="?", help="the account name (add, remove)")
    parser.add_argument("--role", choices=ROLES, default="annotator", help="role of an added account")
    parser.add_argument("--file", default=None, help="the users file (default: $CAP_USERS)")


def read_password() -> str:
    """From the terminal, typed twice, or else the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def main(args: argparse.Namespace) -> int:
    from cap_app.annotate import accounts

    try:
        path = accounts.users_path(args.file)
        if args.action == "list":
            users = accounts.read_users(path)
            for name in sorted(users):
                print(f"{name}\t{users[name]['role']}")
            if not users:
                print(f"no accounts in {path}", file=sys.stderr)
            return 0
        if not args.name:
            return fail(f"users {args.action} needs an account name", 2)
        if args.action == "remove":
            if not accounts.remove_user(args.name, path):
                return fail(f"no account {args.name} in {path}", 1)
            print(f"removed {args.name} (their judgements stay, under that name)")
            return 0
        accounts.check_name(args.name)
        new = accounts.add_user(args.name, read_password(), args.role, path)
    except (accounts.AccountError, ValueError, OSError) as exc:
        return fail(exc, 2)
    print(f"{'added' if new else 'updated'} {args.name} ({args.role}) in {path}")
    return 0
