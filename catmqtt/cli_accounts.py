"""This module holds the account commands of ``catmqtt`` (``user add|del|list``,
``token create|list|revoke``), which change a subscriber's accounts in its
state directory, running or not, and how a client command gets its password.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time

from . import config
from .errors import ConfigError


def _accounts(args: argparse.Namespace, conf: dict):
    """Return the accounts of the subscriber's state directory. Only adding a user or
    making a token starts them: the other actions refuse a directory without any
    (a mistyped --statedir would otherwise show no users, or delete none, quietly)."""
    from .subscriber.accounts import FILE, Accounts

    s = config.node_settings(conf, "subscriber", args.id, statedir=args.statedir)
    if args.action not in ("add", "create") and not (s["statedir"] / FILE).is_file():
        raise ConfigError(
            f"no accounts in {s['statedir']}: not a subscriber's state directory (--statedir, --id),"
            f" or no user added there yet ('catmqtt user add NAME --admin --statedir {s['statedir']}')"
        )
    return Accounts(s["statedir"])


def _new_password(name: str) -> str:
    """Read a new password: twice from the terminal, or one line of standard input."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the passwords differ")
        return password
    return sys.stdin.readline().rstrip("\n")


def cmd_user(args: argparse.Namespace, conf: dict) -> int:
    from .subscriber.tokens import parse_password, parse_username

    accounts = _accounts(args, conf)
    if args.action == "list":
        for user in accounts.users():
            print(user.name + (" (admin)" if user.admin else ""))
        return 0
    if args.name is None:
        raise ConfigError(f"give the NAME of the user to {args.action}")
    if args.action == "add":
        name = parse_username(args.name)
        accounts.add_user(name, parse_password(_new_password(name)), args.admin)
        print(f"User {name} added" + (" (admin)" if args.admin else "") + f" to {accounts.path}")
    else:
        accounts.delete_user(args.name)
        print(f"User {args.name} deleted, and its sessions and tokens with it")
    return 0


def cmd_token(args: argparse.Namespace, conf: dict) -> int:
    accounts = _accounts(args, conf)
    if args.action == "list":
        for name, user, expires in accounts.agents():
            until = (
                "never expires"
                if expires is None
                else "expires " + time.strftime("%Y-%m-%d %H:%M", time.localtime(expires))
            )
            print(f"{name} (as {user or 'a reader'}, {until})")
        return 0
    if args.name is None:
        raise ConfigError(f"give the NAME of the token to {args.action}")
    if args.action == "create":
        token = accounts.create_agent(args.name, args.user, args.expires)
        print(token)
        print(f"Token {args.name} made: keep it now, it is not shown again", file=sys.stderr)
    else:
        accounts.revoke_agent(args.name)
        print(f"Token {args.name} revoked")
    return 0


def add_commands(add) -> None:
    """Add the account commands with `add(name, func, help)`, which returns a command's parser."""
    p = add(
        "user",
        cmd_user,
        "add, delete or list the users of a subscriber's HTTP API (running or not; MQTT users: passwd)",
    )
    _account_options(p, ("add", "del", "list"), "the user's name")
    p.add_argument("--admin", action="store_true", help="the user may change what the subscriber keeps")
    p = add("token", cmd_token, "make, list or revoke the agent tokens of a subscriber (running or not)")
    _account_options(p, ("create", "list", "revoke"), "the token's name")
    p.add_argument(
        "--user", metavar="USER", help="the token acts as USER (default: a reader of its own name)"
    )
    p.add_argument(
        "--expires", type=float, metavar="DAYS", help="the token expires after DAYS days (default: never)"
    )


def _account_options(p: argparse.ArgumentParser, actions: tuple[str, ...], name: str) -> None:
    p.add_argument("action", choices=actions)
    p.add_argument("name", nargs="?", help=name)
    p.add_argument("--id", help="the subscriber's id (selects the config section subscriber.<id>)")
    p.add_argument(
        "--statedir", metavar="DIR", help="the subscriber's state directory (default ./_catmqtt/subscriber)"
    )


def client_password(user: str | None) -> str | None:
    """Return the password of `user`: ``$CATMQTT_PASSWORD``, else asked on the terminal."""
    if user is None:
        return None
    password = os.environ.get(config.USER_PASSWORD_ENV)
    if password is not None:
        return password
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {user}: ")
    raise ConfigError(f"set ${config.USER_PASSWORD_ENV} to the password of {user} (or run on a terminal)")
