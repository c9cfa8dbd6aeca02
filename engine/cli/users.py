"""``users``: local accounts of the review store (add, list, set-role, disable, enable, passwd,
force-reset; locks / unlock: failed sign-ins; policy: password rules and throttling limits) and
``settings``: team-mode data roots and export roots.

The command line acts as the local operator (whoever can run it can already open the store's
database), so it needs no sign-in; every change is recorded in the store's admin log. Each command
says on stderr which store and workspace it used (:func:`engine.install.resolve_settings`: the same
ones ``make serve`` and the app use).
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import fields, replace
from typing import Any

from engine.cli._store import add_store_option, open_store
from engine.cli.common import write_json
from engine.store.signin import SignInPolicy

ROLES = ("viewer", "annotator", "reviewer", "admin")


def register(sub) -> None:
    p = sub.add_parser("users", help="accounts and roles of the review store (viewer < annotator < reviewer < admin)")
    us = p.add_subparsers(dest="users_command", metavar="ACTION")
    us.required = True

    a = us.add_parser("add", help="add an account; password: one line on stdin, or $SEGWB_PASSWORD")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=ROLES)
    add_store_option(a)
    a.set_defaults(func=cmd_add)

    ls = us.add_parser("list", help="list accounts")
    ls.add_argument("--json", dest="json_out", metavar="FILE", help="also write [{name, role, active}] to FILE")
    add_store_option(ls)
    ls.set_defaults(func=cmd_list)

    sr = us.add_parser("set-role", help="change a user's role")
    sr.add_argument("name")
    sr.add_argument("--role", required=True, choices=ROLES)
    add_store_option(sr)
    sr.set_defaults(func=cmd_set_role)

    for action, helptext in (("disable", "disable an account (kept for the audit log)"),
                             ("enable", "re-enable a disabled account")):
        d = us.add_parser(action, help=helptext)
        d.add_argument("name")
        add_store_option(d)
        d.set_defaults(func=cmd_enable if action == "enable" else cmd_disable)

    pw = us.add_parser("passwd", help="set a user's password (stdin or $SEGWB_PASSWORD)")
    pw.add_argument("name")
    pw.add_argument("--must-change", action="store_true", help="also require a new password at the next sign-in "
                    "(a temporary password)")
    add_store_option(pw)
    pw.set_defaults(func=cmd_passwd)

    fr = us.add_parser("force-reset", help="require a new password at the user's next sign-in (the app asks for "
                       "one before anything else)")
    fr.add_argument("name")
    fr.add_argument("--cancel", action="store_true", help="take the requirement back")
    add_store_option(fr)
    fr.set_defaults(func=cmd_force_reset)

    lk = us.add_parser("locks", help="recent failed sign-ins per account name and client address (delays, "
                       "lock-outs)")
    lk.add_argument("--json", dest="json_out", metavar="FILE", help="also write them to FILE")
    add_store_option(lk)
    lk.set_defaults(func=cmd_locks)

    ul = us.add_parser("unlock", help="lift the sign-in delay or lock-out of an account name (or, with --address, "
                       "of a client address)")
    ul.add_argument("name", help="the account name, or the address with --address")
    ul.add_argument("--address", action="store_true", help="NAME is a client address (see users locks)")
    add_store_option(ul)
    ul.set_defaults(func=cmd_unlock)

    po = us.add_parser("policy", help="show or change the password policy and sign-in throttling limits")
    for f in fields(SignInPolicy):
        po.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), metavar="N",
                        help=f"default {f.default}")
    add_store_option(po)
    po.set_defaults(func=cmd_policy)

    s = sub.add_parser("settings", help="team-mode settings in the review store: data roots, export roots")
    s.add_argument("--data-roots", nargs="*", metavar="DIR", help="replace the data roots (folders datasets may "
                   "be opened from in team mode)")
    s.add_argument("--export-roots", nargs="*", metavar="DIR", help="replace the export roots (folders exports and "
                   "manifests may be written to in team mode, besides the workspace)")
    s.add_argument("--allow-root", action="store_true", help="accept a filesystem root (/), the home folder or "
                   "the folder of all home folders as a data or export root (refused without it: every file below "
                   "could then be opened or written in team mode)")
    s.add_argument("--json", dest="json_out", metavar="FILE", help="write the settings as JSON")
    add_store_option(s)
    s.set_defaults(func=cmd_settings)


def read_password(prompt: str = "password: ") -> str:
    """``$SEGWB_PASSWORD``, else one line from stdin (a hidden prompt on a terminal)."""
    env = os.environ.get("SEGWB_PASSWORD")
    if env is not None:
        return env
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(prompt)
    return (sys.stdin.readline() if sys.stdin is not None else "").rstrip("\r\n")


def cmd_add(args) -> int:
    from engine.store import LOCAL_OPERATOR

    with open_store(args, announce=True) as store:
        u = store.add_user(args.name, args.role, read_password(f"password for {args.name}: "), actor=LOCAL_OPERATOR)
        print(f"added {u.role} {u.name} to {store.path}")
    return 0


def cmd_list(args) -> int:
    with open_store(args, announce=True) as store:
        users = store.users()
        write_json(args.json_out, [u.to_dict() for u in users])
        if not users:
            print(f"no accounts in {store.path}: open single-user mode (any author name is accepted)")
        for u in users:
            print(f"{u.name:<24} {u.role:<10} {'active' if u.active else 'disabled'}")
    return 0


def cmd_set_role(args) -> int:
    from engine.store import LOCAL_OPERATOR

    with open_store(args, announce=True) as store:
        u = store.set_role(args.name, args.role, actor=LOCAL_OPERATOR)
        print(f"{u.name} is now {u.role}")
    return 0


def cmd_disable(args) -> int:
    from engine.store import LOCAL_OPERATOR

    with open_store(args, announce=True) as store:
        store.disable_user(args.name, actor=LOCAL_OPERATOR)
        print(f"disabled {args.name}")
    return 0


def cmd_enable(args) -> int:
    from engine.store import LOCAL_OPERATOR

    with open_store(args, announce=True) as store:
        store.enable_user(args.name, actor=LOCAL_OPERATOR)
        print(f"enabled {args.name}")
    return 0


def cmd_passwd(args) -> int:
    from engine.store import LOCAL_OPERATOR

    with open_store(args, announce=True) as store:
        store.set_password(args.name, read_password(f"new password for {args.name}: "), actor=LOCAL_OPERATOR,
                           must_change=True if args.must_change else None)
        print(f"password of {args.name} changed" + (" (a new one is required at the next sign-in)"
                                                    if args.must_change else ""))
    return 0


def cmd_force_reset(args) -> int:
    from engine.store import LOCAL_OPERATOR

    with open_store(args, announce=True) as store:
        store.require_password_change(args.name, actor=LOCAL_OPERATOR, required=not args.cancel)
        print(f"{args.name} " + ("no longer needs a new password" if args.cancel else
                                 "must set a new password at the next sign-in"))
    return 0


def cmd_locks(args) -> int:
    from datetime import datetime, timezone

    def t(x: float) -> str:
        return datetime.fromtimestamp(x, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    with open_store(args, announce=True) as store:
        rows = store.signin_failures()
        write_json(args.json_out, rows)
        if not rows:
            print("no recent failed sign-ins")
        for r in rows:
            status = f"locked until {t(r['retry_at'])}" if r["locked"] else (
                f"must wait until {t(r['retry_at'])}" if r["waiting"] else "counting")
            print(f"{r['kind']:<8} {r['key']:<32} {r['failures']:>4} failures, last {t(r['last_failed'])}, {status}")
    return 0


def cmd_unlock(args) -> int:
    from engine.store import LOCAL_OPERATOR

    kind = "address" if args.address else "account"
    with open_store(args, announce=True) as store:
        if store.unlock_signin(args.name, actor=LOCAL_OPERATOR, kind=kind):
            print(f"unlocked {kind} {args.name}: its failed sign-ins are cleared")
        else:
            print(f"no failed sign-ins recorded for {kind} {args.name}: nothing to unlock")
    return 0


def cmd_policy(args) -> int:
    from engine.store import LOCAL_OPERATOR

    with open_store(args, announce=True) as store:
        policy = store.signin_policy()
        changes = {f.name: getattr(args, f.name) for f in fields(SignInPolicy) if getattr(args, f.name) is not None}
        if changes:
            policy = store.set_signin_policy(replace(policy, **changes), actor=LOCAL_OPERATOR)
        for k, v in policy.to_dict().items():
            print(f"{k:<22} {v}")
    return 0


def cmd_settings(args) -> int:
    from engine.store import LOCAL_OPERATOR

    with open_store(args, announce=True) as store:
        if args.data_roots is not None:
            store.set_data_roots(args.data_roots, actor=LOCAL_OPERATOR, confirm_broad=args.allow_root)
        if args.export_roots is not None:
            store.set_export_roots(args.export_roots, actor=LOCAL_OPERATOR, confirm_broad=args.allow_root)
        info: dict[str, Any] = {"store": str(store.path), "data_roots": [str(p) for p in store.data_roots()],
                                "export_roots": [str(p) for p in store.export_roots()],
                                "has_admin": store.has_admin(), "open_mode": store.open_mode}
        write_json(args.json_out, info)
        print(f"store         {info['store']}\n"
              f"mode          {'open single-user (no accounts)' if info['open_mode'] else 'team (accounts)'}"
              f"{'' if info['has_admin'] or info['open_mode'] else ' - no active admin!'}\n"
              f"data roots    {', '.join(info['data_roots']) or '(none)'}\n"
              f"export roots  {', '.join(info['export_roots']) or '(none)'}")
    return 0
