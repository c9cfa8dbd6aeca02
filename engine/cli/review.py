"""``review``: conflict-review decisions, undo, case review states and case claims from the shell.

``keep_a`` keeps A *as given on the command line*. Exit codes: 2 bad input, 3 stale decision or
held claim (nothing written), 4 unknown/disabled user or insufficient role (nothing written).
"""

from __future__ import annotations

from engine.cli._store import add_store_option, open_store
from engine.cli.common import add_dataset_options, open_dataset_from_args, write_json

DECISIONS = ("keep_a", "keep_b", "keep_both", "union", "both_empty", "drop_both", "not_duplicate", "needs_expert")
STATES = ("unreviewed", "accepted", "needs_fix", "corrected")


def register(sub) -> None:
    p = sub.add_parser("review", help="record and read review decisions, undo, case states and claims")
    rs = p.add_subparsers(dest="review_command", metavar="ACTION")
    rs.required = True

    def common(q) -> None:
        q.add_argument("dataset", help="dataset folder or manifest JSON")
        add_store_option(q)
        add_dataset_options(q)

    d = rs.add_parser("decide", help="decide a near-duplicate pair; prints the new event id last")
    common(d)
    d.add_argument("--pair", nargs=2, required=True, metavar=("A", "B"), help="the two case ids")
    d.add_argument("--decision", required=True, choices=DECISIONS, help="keep_a keeps A as given here")
    d.add_argument("--user", required=True, help="the acting user (reviewer or admin once accounts exist)")
    d.add_argument("--base-event", type=int, help="the current decision you are replacing (event id)")
    d.add_argument("--force", action="store_true", help="replace whatever the current decision is")
    d.add_argument("--note", default="", help="why")
    d.set_defaults(func=cmd_decide)

    ls = rs.add_parser("decisions", help="current decisions (a, b, decision, kept, dropped, user, event_id)")
    common(ls)
    ls.add_argument("--json", dest="json_out", metavar="FILE", help="write them as JSON")
    ls.set_defaults(func=cmd_decisions)

    u = rs.add_parser("undo", help="undo the current decision on a pair; prints the undo event id last")
    common(u)
    u.add_argument("--pair", nargs=2, required=True, metavar=("A", "B"))
    u.add_argument("--user", required=True)
    u.add_argument("--base-event", type=int, help="the decision you saw (refused if it changed meanwhile)")
    u.add_argument("--note", default="")
    u.set_defaults(func=cmd_undo)

    s = rs.add_parser("set-state", help="set a case's review state; prints the event id last")
    common(s)
    s.add_argument("case")
    s.add_argument("state", choices=STATES)
    s.add_argument("--user", required=True)
    s.add_argument("--note", default="")
    s.set_defaults(func=cmd_set_state)

    c = rs.add_parser("claim", help="claim a case for editing (a lease)")
    common(c)
    c.add_argument("case")
    c.add_argument("--user", required=True)
    c.add_argument("--ttl", type=float, default=300.0, help="lease in seconds (default 300)")
    c.set_defaults(func=cmd_claim)

    r = rs.add_parser("release", help="release your claim on a case")
    common(r)
    r.add_argument("case")
    r.add_argument("--user", required=True)
    r.add_argument("--force", action="store_true", help="admin: release someone else's claim")
    r.set_defaults(func=cmd_release)

    cl = rs.add_parser("claims", help="who is editing which case now")
    common(cl)
    cl.add_argument("--json", dest="json_out", metavar="FILE")
    cl.set_defaults(func=cmd_claims)


def _known(ds, *case_ids: str) -> None:
    from engine.errors import ConfigError

    for cid in case_ids:
        try:
            ds.case(cid)
        except Exception:  # noqa: BLE001 - any lookup failure means the id is not in this dataset
            raise ConfigError(f"case {cid!r} is not in the dataset", path=ds.root,
                              hint="use a case id from the dataset (python -m engine info / the browser)") from None


def cmd_decide(args) -> int:
    ds = open_dataset_from_args(args)
    a, b = args.pair
    _known(ds, a, b)
    with open_store(args, ds) as store:
        eid = store.record_decision(a, b, args.decision, args.user, args.note, base_event=args.base_event,
                                    force=args.force)
        d = store.decision_for(a, b)
    assert d is not None  # just recorded
    print(f"{args.decision} on ({a}, {b}) by {args.user}: kept {', '.join(d.kept) or '-'}, "
          f"dropped {', '.join(d.dropped) or '-'}")
    print(eid)
    return 0


def cmd_decisions(args) -> int:
    ds = open_dataset_from_args(args)
    with open_store(args, ds) as store:
        decisions = sorted(store.decisions().values(), key=lambda d: d.event_id)
    rows = [d.to_dict() for d in decisions]
    write_json(args.json_out, rows)
    for d in decisions:
        who = f"{d.given} by {d.reviewer} at {d.ts[:19].replace('T', ' ')} (event {d.event_id})"
        what = f"({d.a}, {d.b})" if d.target_kind == "pair" else f"group {', '.join(d.members)}"
        print(f"{what:<32} {who}")
    print(f"{len(rows)} current decisions")
    return 0


def cmd_undo(args) -> int:
    ds = open_dataset_from_args(args)
    a, b = args.pair
    with open_store(args, ds) as store:
        eid = store.undo_decision(a, b, args.user, args.note, base_event=args.base_event)
    print(f"undid the decision on ({a}, {b})")
    print(eid)
    return 0


def cmd_set_state(args) -> int:
    ds = open_dataset_from_args(args)
    _known(ds, args.case)
    with open_store(args, ds) as store:
        eid = store.set_case_state(args.case, args.state, args.user, args.note)
    print(eid)
    return 0


def cmd_claim(args) -> int:
    ds = open_dataset_from_args(args)
    _known(ds, args.case)
    with open_store(args, ds) as store:
        c = store.claim(args.case, args.user, args.ttl)
    print(f"{c.user} holds case {c.case_id} for {c.seconds_left:.0f} s")
    return 0


def cmd_release(args) -> int:
    ds = open_dataset_from_args(args)
    with open_store(args, ds) as store:
        done = store.release(args.case, args.user, force=args.force)
    print("released" if done else "no claim to release")
    return 0


def cmd_claims(args) -> int:
    ds = open_dataset_from_args(args)
    with open_store(args, ds) as store:
        claims = store.claims()
    rows = [{"case_id": c.case_id, "user": c.user, "claimed": c.claimed, "expires": c.expires} for c in claims.values()]
    write_json(args.json_out, rows)
    for c in claims.values():
        print(f"{c.case_id:<24} {c.user:<16} {c.seconds_left:.0f} s left")
    print(f"{len(rows)} active claims")
    return 0
