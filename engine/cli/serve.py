"""``serve-check``: the preflight of team mode (``make serve`` runs it before starting the app).

Exits 0 and prints the admins, data roots and export roots when team mode can start; exits 2 with
how to create an admin when the store has none (``python -m engine users add NAME --role admin``).
"""

from __future__ import annotations

import sys

from engine.cli._store import add_store_option


def register(sub) -> None:
    p = sub.add_parser("serve-check", help="check that team mode can start (an active admin exists)")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write the result as JSON")
    add_store_option(p)
    p.set_defaults(func=cmd_serve_check)


def cmd_serve_check(args) -> int:
    from engine.cli.common import write_json
    from engine.install import resolve_settings
    from engine.serving import serve_check

    cfg = resolve_settings(workspace=getattr(args, "workspace", None), store=getattr(args, "store", None))
    print(f"segwb: {cfg.describe()}", file=sys.stderr)
    if cfg.note:
        print(f"note: {cfg.note}", file=sys.stderr)
    info = serve_check(store_url=getattr(args, "store", None))
    write_json(args.json_out, info)
    print(f"team mode can start: store {info['store']}, admin(s) {', '.join(info['admins'])}, "
          f"{info['users']} account(s)")
    print(f"workspace: {info['workspace']} (install secret {info['secret_file']})")
    if not info["data_roots"]:
        print("note: no data roots yet: nobody can open a folder until an admin sets them "
              "(Admin page, or python -m engine settings --data-roots DIR ...)")
    else:
        print(f"data roots: {', '.join(info['data_roots'])}")
    print(f"export roots: {', '.join(info['export_roots']) or '(none: exports go under the workspace)'}")
    return 0
