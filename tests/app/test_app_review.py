"""AppTest of pages/6_Conflict_review.py on the tiny demo phantom (real engine calls, no mocks).

The tiny nerve phantom has planted near-duplicate pairs (``planted_pairs.json``): the queue must
show exactly them, most severe first; every decision is read back from the review store (a
fresh workspace per test), so the page's state is checked against the append-only log.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from engine.curation import BULK_NOTE, key_text, pair_key, parse_key, severity_order
from engine.datasets import open_dataset, write_manifest
from engine.dedup import ConflictConfig, find_conflicts, load_latest_report
from engine.store import ReviewStore
from engine.workspace import Workspace
from tests.support.helpers import app_test, ok, point_app_at, tiny_demo_dir
from ui import state

REPO = Path(__file__).resolve().parents[2]
PAGE = str(REPO / "pages" / "6_Conflict_review.py")


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_demo_dir(tmp_path_factory, "review_demo")


@pytest.fixture()
def env(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A fresh workspace per test (own report, own review store), set before any page run."""
    from engine.phantoms import load_planted_pairs

    ws = tmp_path / "workspace"
    ws.mkdir()
    point_app_at(monkeypatch, demo, ws)  # also clears the caches: cached datasets carry an earlier workspace
    nerve = demo / "nerve"
    planted = {pair_key(p["a"], p["b"]): p for p in load_planted_pairs(nerve)}
    return SimpleNamespace(ws=ws, nerve=nerve, ds=open_dataset(nerve, workspace=Workspace(ws)), planted=planted)


@pytest.fixture()
def report(env: SimpleNamespace):
    """The duplicate search already run (by the engine, as the CLI would), saved as the latest report."""
    return find_conflicts(env.ds, ConflictConfig())


def app(env: SimpleNamespace, reviewer: str | None = None, **session) -> AppTest:
    base = {state.Shared.DATASET: str(env.nerve)}
    if reviewer:
        base[state.Shared.REVIEWER] = reviewer
    return app_test(PAGE, base, **session)


def store_of(env: SimpleNamespace) -> ReviewStore:
    return ReviewStore.for_dataset(env.ds)


def queue(at: AppTest) -> list[dict]:
    """Rows of the page's queue table (the filtered queue, in queue order)."""
    for df in at.dataframe:
        if {"rank", "a", "b", "state", "severity"} <= set(df.value.columns):
            return df.value.to_dict("records")
    raise AssertionError("no queue table on the page")


def keys(rows: list[dict]) -> list[tuple[str, str]]:
    return [pair_key(r["a"], r["b"]) for r in rows]


def current(at: AppTest) -> tuple[str, str] | None:
    return parse_key(at.session_state[state.Review.CURRENT])


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}: {[m.label for m in at.metric]}"
    return found[0]


def click(at: AppTest, key: str) -> AppTest:
    btn = at.button(key=key)
    assert not btn.disabled, f"button {key} is disabled"
    return ok(btn.click().run())


def queue_count(at: AppTest) -> int:
    for c in at.caption:
        m = re.match(r"\*\*([\d,]+)\*\* of ([\d,]+) pairs in the queue", c.value)
        if m:
            return int(m.group(1).replace(",", ""))
    raise AssertionError("no 'N of M pairs' caption")


# ------------------------------------------------------------------------------------ tests

def test_search_from_the_page_queues_the_planted_pairs_by_severity(env: SimpleNamespace) -> None:
    at = ok(app(env).run())
    assert load_latest_report(env.ds) is None
    assert [b.key for b in at.button] == ["review_search"]  # nothing to review before a search
    assert not [df for df in at.dataframe]
    assert any("No near-duplicate search" in i.value for i in at.info)

    click(at, "review_search")
    rep = load_latest_report(env.ds)
    assert rep is not None
    rows = queue(at)
    # exactly the planted pairs, each with its planted category
    assert set(keys(rows)) == set(env.planted)
    assert len(rows) == len(env.planted)
    assert {pair_key(r["a"], r["b"]): r["category"] for r in rows} == \
        {k: p["kind"] for k, p in env.planted.items()}
    # most severe first, in the engine's order; ranks 1..n
    sev = [r["severity"] for r in rows]
    assert sev == sorted(sev, reverse=True)
    assert keys(rows) == [pair_key(p["a"], p["b"]) for p in severity_order(rep.pairs)]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["category"] == "conflict"
    assert current(at) == keys(rows)[0]  # starts at the most severe undecided pair
    # the search summary: counts per category and timing
    n_conflict = sum(p["kind"] == "conflict" for p in env.planted.values())
    assert metric(at, "conflict") == str(n_conflict)
    assert metric(at, "agree_empty") == str(sum(p["kind"] == "agree_empty" for p in env.planted.values()))
    timing = [c.value for c in at.caption if c.value.startswith("Timing:")]
    assert timing and "total" in timing[0] and "fingerprints" in timing[0]
    assert any(f"Found {len(env.planted)} near-duplicate pairs ({n_conflict} conflicts)" in s.value
               for s in at.success)
    # the current pair: both images, the difference image and the neighbouring frames
    caps = [c for img in at.image for c in img.captions]
    a, b = keys(rows)[0]
    assert any(c.startswith(f"A · {a}") for c in caps) and any(c.startswith(f"B · {b}") for c in caps)
    assert any(c.startswith("|A − B|") for c in caps)
    assert sum("◀ A" in c for c in caps) == 1
    assert metric(at, "Category") == "conflict"
    assert metric(at, "SSIM") == f"{rows[0]['ssim']:.4f}"
    prog = at.get("progress")[0].proto
    assert prog.text.startswith(f"**0 of {len(rows)}** pairs decided")


def test_search_again_with_a_stricter_threshold(env: SimpleNamespace, report) -> None:
    at = ok(app(env).run())
    assert at.number_input(key=state.Review.THRESHOLD).value == pytest.approx(0.99)
    at.number_input(key=state.Review.THRESHOLD).set_value(1.0)
    click(at, "review_search")
    assert load_latest_report(env.ds).config["ssim_threshold"] == 1.0
    assert len(load_latest_report(env.ds).pairs) == 0  # planted twins carry a little noise
    assert any("nothing to review" in s.value for s in at.success)


def test_decisions_are_stored_advance_and_undo_from_the_log(env: SimpleNamespace, report) -> None:
    at = ok(app(env).run())
    rows = queue(at)
    k = keys(rows)
    assert current(at) == k[0]
    # the single-user demo starts with this machine's account name as the reviewer (editable)...
    import getpass

    assert at.text_input(key=state.Review.REVIEWER).value == getpass.getuser()
    assert not at.button(key="review_d_keep_a").disabled
    ok(at.text_input(key=state.Review.REVIEWER).input("").run())  # ...and without a name nothing is recorded
    assert at.button(key="review_d_keep_a").disabled
    at.text_input(key=state.Review.REVIEWER).input("alice")
    at.text_input(key=state.Review.NOTE).input("frozen video frame")
    ok(at.run())
    click(at, "review_d_keep_b")
    with store_of(env) as s:
        d = s.decision_for(*k[0])
        assert (d.decision, d.reviewer, d.note) == ("keep_b", "alice", "frozen video frame")
        first_event = d.event_id
    assert current(at) == k[1]  # advanced to the next undecided pair
    assert at.text_input(key=state.Review.NOTE).value == ""  # the note belongs to one decision
    assert at.session_state[state.Shared.REVIEWER] == "alice"  # the name is remembered
    assert queue(at)[0]["state"] == "decided" and queue(at)[0]["decision"] == "keep_b"

    # another reviewer (another browser session) decides pair 3 meanwhile: the page re-reads the
    # store and skips it when advancing
    with store_of(env) as s:
        s.record_decision(*k[2], "keep_both", "bob")
    click(at, "review_d_needs_expert")
    assert current(at) == k[3]
    states = [r["state"] for r in queue(at)]
    assert states[:4] == ["decided", "needs_expert", "decided", "undecided"]
    assert at.get("progress")[0].proto.text.startswith(f"**2 of {len(k)}** pairs decided · 0 proposed by the bulk "
                                                       "rule · 1 need an expert")

    # undo on pair 1: a new event; the state comes from the log
    ok(at.selectbox(key=state.Review.JUMP).set_value(key_text(k[0])).run())
    assert current(at) == k[0]
    assert any("Keep B, drop A" in s.value for s in at.success)
    click(at, "review_undo")
    with store_of(env) as s:
        assert s.decision_for(*k[0]) is None
        undo = [e for e in s.events(kinds=["undo"])]
        assert len(undo) == 1 and undo[0].ref == first_event and undo[0].author == "alice"
        assert len(s.events(kinds=["decision"])) == 3  # nothing was deleted
    assert queue(at)[0]["state"] == "undecided"
    assert at.button(key="review_undo").disabled
    assert current(at) == k[0]  # undo stays on the pair

    # undo of a later decision restores the earlier one
    click(at, "review_d_keep_a")
    ok(at.selectbox(key=state.Review.JUMP).set_value(key_text(k[0])).run())
    click(at, "review_d_drop_both")
    ok(at.selectbox(key=state.Review.JUMP).set_value(key_text(k[0])).run())
    click(at, "review_undo")
    with store_of(env) as s:
        assert s.decision_for(*k[0]).decision == "keep_a"
    history = [df.value for df in at.dataframe if "status" in df.value.columns][0]
    assert history["status"].tolist() == ["undone", "in force", "undone"]


def test_two_sessions_at_once_lose_no_decision(env: SimpleNamespace, report) -> None:
    one = ok(app(env, reviewer="alice").run())
    two = ok(app(env, reviewer="bob").run())
    k = keys(queue(one))
    assert current(one) == current(two) == k[0]
    click(one, "review_d_keep_a")
    two.button(key="review_d_keep_b").click().run()  # bob's page was drawn before alice decided
    with store_of(env) as s:  # refused as stale: nothing of bob's written, alice's decision stands
        assert [(e.author, e.value) for e in s.events(kinds=["decision"])] == [("alice", "keep_a")]
    err = " ".join(e.value for e in two.error)
    assert "Not recorded" in err and "alice" in err and "Keep A, drop B" in err, err
    assert current(two) == k[0]  # bob stays on the pair, now showing alice's decision
    click(two, state.Review.OVERRIDE)  # bob overrides on purpose (a forced decision)
    with store_of(env) as s:
        evs = s.events(kinds=["decision"])
        assert [(e.author, e.value) for e in evs] == [("alice", "keep_a"), ("bob", "keep_b")]
        assert s.decision_for(*k[0]).reviewer == "bob"
    ok(one.selectbox(key=state.Review.JUMP).set_value(key_text(k[0])).run())
    assert any("bob" in x.value and "Keep B, drop A" in x.value for x in one.success)  # re-read, not cached
    hist = [df.value for df in one.dataframe if "status" in df.value.columns][0]
    assert hist["status"].tolist() == ["superseded", "in force"]


def test_navigation_buttons(env: SimpleNamespace, report) -> None:
    at = ok(app(env).run())
    k = keys(queue(at))
    assert at.button(key="review_prev").disabled
    click(at, "review_next")
    assert current(at) == k[1]
    click(at, "review_next")
    click(at, "review_prev")
    assert current(at) == k[1]
    with store_of(env) as s:
        s.record_decision(*k[2], "keep_both", "bob")
    click(at, "review_next_open")
    assert current(at) == k[3]


def test_filters_change_the_queue_exactly(env: SimpleNamespace, report) -> None:
    at = ok(app(env).run())
    total = len(env.planted)
    assert queue_count(at) == total == len(queue(at))
    conflicts = [k for k, p in env.planted.items() if p["kind"] == "conflict"]
    at.multiselect(key=state.Review.F_CATEGORY).set_value(["conflict"])
    ok(at.run())
    assert queue_count(at) == len(queue(at)) == len(conflicts)
    assert set(keys(queue(at))) == set(conflicts)
    assert current(at) in conflicts

    subject = sorted({k[0].split("_")[0] for k in env.planted})[0]
    at.multiselect(key=state.Review.F_SUBJECT).set_value([subject])
    ok(at.run())
    want = [k for k in conflicts if k[0].split("_")[0] == subject]
    assert set(keys(queue(at))) == set(want) and queue_count(at) == len(want) >= 1

    at.multiselect(key=state.Review.F_CATEGORY).set_value([])
    at.multiselect(key=state.Review.F_SUBJECT).set_value([])
    ok(at.run())
    assert queue_count(at) == total
    with store_of(env) as s:
        first = keys(queue(at))[0]
        s.record_decision(*first, "keep_both", "bob")
        s.record_decision(*keys(queue(at))[1], "needs_expert", "bob")
    at.multiselect(key=state.Review.F_STATE).set_value(["decided"])
    ok(at.run())
    assert keys(queue(at)) == [first] and queue_count(at) == 1
    at.multiselect(key=state.Review.F_STATE).set_value(["undecided"])
    ok(at.run())
    assert queue_count(at) == total - 2 and first not in keys(queue(at))
    at.multiselect(key=state.Review.F_STATE).set_value(["undecided", "needs_expert"])
    ok(at.run())
    assert queue_count(at) == total - 1

    # a filter matching nothing is explained, not an error
    at.multiselect(key=state.Review.F_STATE).set_value(["proposed"])
    ok(at.run())
    assert queue_count(at) == 0
    assert any("No pair matches the filters" in i.value for i in at.info)


def test_bulk_proposal_of_the_case_study_rule(env: SimpleNamespace, report) -> None:
    conflicts = {k: p for k, p in env.planted.items() if p["kind"] == "conflict"}
    at = ok(app(env).run())
    assert metric(at, "Conflict pairs") == str(len(conflicts))
    assert metric(at, "Would be proposed") == str(len(conflicts))
    at.text_input(key=state.Review.REVIEWER).input("")
    ok(at.run())
    assert at.button(key="review_bulk_apply").disabled  # no reviewer
    at.text_input(key=state.Review.REVIEWER).input("carol")
    ok(at.run())
    click(at, "review_bulk_apply")
    with store_of(env) as s:
        dec = s.decisions()
    assert {m for (_, m) in dec} == set(conflicts)  # only conflict pairs, every one of them
    for k, p in conflicts.items():
        d = dec[("pair", k)]
        assert d.note == BULK_NOTE and d.reviewer == "carol"
        has = {p["a"]: p["a_has_mask"], p["b"]: p["b_has_mask"]}
        kept = k[0] if d.decision == "keep_a" else k[1]
        assert d.decision in ("keep_a", "keep_b") and has[kept] and not has[k[1] if kept == k[0] else k[0]]
    rows = queue(at)
    assert [r["state"] for r in rows if r["category"] == "conflict"] == ["proposed"] * len(conflicts)
    assert metric(at, "Would be proposed") == "0" and metric(at, "Proposals in force") == str(len(conflicts))

    # a reviewer confirms the first proposal: it becomes an ordinary decision
    first = keys(rows)[0]
    ok(at.selectbox(key=state.Review.JUMP).set_value(key_text(first)).run())
    assert any("Proposed by the case study's rule" in w.value for w in at.warning)
    proposed = dec[("pair", first)].decision
    click(at, "review_confirm")
    with store_of(env) as s:
        d = s.decision_for(*first)
        assert (d.decision, d.note, d.reviewer) == (proposed, "", "carol")

    # undo the remaining proposals in bulk: the confirmed one stays
    click(at, "review_bulk_undo")
    with store_of(env) as s:
        dec = s.decisions()
    assert set(m for (_, m) in dec) == {first}
    assert metric(at, "Would be proposed") == str(len(conflicts) - 1)
    assert metric(at, "Proposals in force") == "0"


def test_manifest_export_follows_the_decisions(env: SimpleNamespace, report, tmp_path: Path) -> None:
    pairs = {pair_key(p["a"], p["b"]): p for p in report.pairs}
    conflicts = [k for k in (pair_key(p["a"], p["b"]) for p in severity_order(report.pairs))
                 if pairs[k]["category"] == "conflict"]
    disagree = [k for k, p in pairs.items() if p["category"] == "disagree"][0]
    c1, c2, c3 = conflicts[:3]
    with store_of(env) as s:
        s.record_decision(*c1, "keep_a", "dan")
        s.record_decision(*c2, "drop_both", "dan")
        s.record_decision(*disagree, "union", "dan")
    out = tmp_path / "exports" / "clean.json"
    at = ok(app(env).run())
    at.text_input(key=state.Review.MANIFEST_PATH).input(str(out))
    ok(at.run())
    click(at, "review_export_btn")
    data = json.loads(out.read_text())
    dropped = {d["case_id"] for d in data["dropped"]}
    assert dropped == {c1[1], c2[0], c2[1]}
    kept = {c["case_id"]: c for c in data["cases"]}
    assert len(kept) == len(env.ds) - 3 and not dropped & set(kept)
    for cid in disagree:  # both members get the union mask (a PNG in the store's folder)
        assert kept[cid]["mask"]["kind"] == "file" and kept[cid]["meta"]["mask_origin"] == "review:union"
    assert kept[disagree[0]]["mask"]["path"] == kept[disagree[1]]["mask"]["path"]
    assert metric(at, "Kept") == str(len(env.ds) - 3)
    assert metric(at, "Dropped") == "3"
    assert metric(at, "Union masks") == "2"
    assert metric(at, "Conflicts without decision") == str(len(conflicts) - 2)
    code = [c.value for c in at.code]
    assert any(v.startswith("python -m engine train --data ") and str(out) in v for v in code)
    assert at.session_state[state.Review.EXPORT]["path"] == str(out.resolve())
    # the manifest opens as a dataset without the dropped cases
    assert set(open_dataset(out).case_ids) == set(kept)

    # the case study's rule as an export policy: the empty twin of the undecided conflict goes too
    at.radio(key=state.Review.POLICY).set_value("drop-empty")
    at.text_input(key=state.Review.MANIFEST_PATH).input("")
    ok(at.run())
    click(at, "review_export_btn")
    path = Path(at.session_state[state.Review.EXPORT]["path"])
    assert path.parent == Path(env.ds.workdir).resolve() / "manifests" and path.name.startswith("clean-")
    data = json.loads(path.read_text())
    p3 = pairs[c3]
    empty3 = p3["a"] if p3["area_a"] == 0 else p3["b"]
    assert {d["case_id"] for d in data["dropped"]} == {c1[1], c2[0], c2[1], empty3}
    assert data["info"]["policy"] == "drop-empty"
    assert metric(at, "Dropped") == "4"


def test_manifest_path_never_overwrites_a_foreign_file(env: SimpleNamespace, report, tmp_path: Path) -> None:
    """A model's card.json typed as the manifest path is kept; the manifest goes to card-1.json, said so."""
    card = tmp_path / "model" / "card.json"
    card.parent.mkdir()
    card.write_text('{"name": "my-model"}')
    at = ok(app(env).run())
    at.text_input(key=state.Review.MANIFEST_PATH).input(str(card))
    ok(at.run())
    click(at, "review_export_btn")
    assert card.read_text() == '{"name": "my-model"}'
    written = Path(at.session_state[state.Review.EXPORT]["path"])
    assert written == (card.parent / "card-1.json").resolve() and json.loads(written.read_text())["cases"]
    assert any("card.json" in w.value and "kept" in w.value for w in at.warning)


def test_ceiling_and_leakage_are_shown(env: SimpleNamespace, report) -> None:
    at = ok(app(env).run())
    c, lk = report.ceiling, report.leakage
    assert metric(at, "Dataset-wide ceiling") == f"{c['dataset']:.4f}"
    assert metric(at, "Ceiling on affected cases") == f"{c['mean_affected']:.4f}"
    n_bad = sum(p["kind"] in ("conflict", "disagree") for p in env.planted.values())
    assert metric(at, "Affected cases") == str(c["n_affected"]) == str(2 * n_bad)
    assert lk["available"] and metric(at, "Groups split across folds") == str(lk["n_groups_split"])
    assert any(x.value.startswith("Leakage:") for x in at.caption)


def test_deep_link_from_the_browser_starts_at_the_pair(env: SimpleNamespace, report) -> None:
    order = [pair_key(p["a"], p["b"]) for p in severity_order(report.pairs)]
    target = order[-1]
    at = app(env, **{state.Shared.BROWSER_CASE: target[1], state.Review.F_CATEGORY: ["conflict"]})
    ok(at.run())
    assert current(at) == target
    assert queue_count(at) == len(order)  # the filters were cleared so the pair is visible
    # the link is used once: moving on is not undone by the next rerun
    click(at, "review_prev")
    assert current(at) == order[-2]
    ok(at.run())
    assert current(at) == order[-2]

    # another page's explicit request wins even when BROWSER_CASE was already used
    at.session_state[state.Review.REQUEST_CASE] = order[1][0]
    ok(at.run())
    assert current(at) == order[1]
    ok(at.run())
    assert current(at) == order[1]

    # a case in no pair: the queue starts at the most severe pair
    in_pairs = {c for k in order for c in k}
    other = next(c for c in env.ds.case_ids if c not in in_pairs)
    at2 = ok(app(env, **{state.Shared.BROWSER_CASE: other}).run())
    assert current(at2) == order[0]


def test_a_manifest_dataset_is_reviewed_in_its_own_store(env: SimpleNamespace, tmp_path: Path) -> None:
    from engine.datasets import open_dataset

    path = write_manifest(tmp_path / "m.json", env.ds, env.ds.cases)
    man = open_dataset(path)
    assert man.workdir is not None and man.workdir != env.ds.workdir  # second-round review: own decisions
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state[state.Shared.DATASET] = str(path)
    ok(at.run())
    assert any("No near-duplicate search has been run" in i.value for i in at.info)
    assert "review_search" in {b.key for b in at.button}


def test_corrected_masks_and_orphan_decisions_are_shown(env: SimpleNamespace, report) -> None:
    import numpy as np

    first = pair_key(severity_order(report.pairs)[0]["a"], severity_order(report.pairs)[0]["b"])
    in_pairs = {c for p in report.pairs for c in (p["a"], p["b"])}
    loose = [c for c in env.ds.case_ids if c not in in_pairs][:2]
    with store_of(env) as s:
        m = env.ds.load_mask(first[1])
        fixed = np.zeros_like(m)
        fixed[10:30, 10:40] = 1
        s.save_mask_version(first[1], fixed, "editor")
        s.record_decision(*loose, "drop_both", "erin")  # a pair from an earlier, looser search
    at = ok(app(env).run())
    caps = [c for img in at.image for c in img.captions]
    assert f"B · {first[1]} · corrected mask v1 · {20 * 30:,} px" in caps, caps
    assert any("1 decision(s) in the store concern pairs that are not in this search" in c.value for c in at.caption)


# ------------------------------------------------------------------------------------ queue logic

def test_queue_logic_on_a_real_store(tmp_path: Path) -> None:
    from types import SimpleNamespace as C

    from engine.curation import (
        QueueFilter,
        apply_proposals,
        build_queue,
        bulk_proposals,
        filter_queue,
        first_open,
        neighbours,
        next_open,
        pair_history,
        progress_counts,
        undo_proposals,
    )

    pairs = [  # severity order: p2, p1, p3, p4
        {"a": "1_2", "b": "1_1", "category": "conflict", "severity": 0.6, "ssim": 0.995, "area_a": 0, "area_b": 50,
         "subjects": ["1", "1"]},
        {"a": "2_1", "b": "2_9", "category": "conflict", "severity": 0.9, "ssim": 0.999, "area_a": 40, "area_b": 0,
         "subjects": ["2", "2"]},
        {"a": "3_1", "b": "3_2", "category": "agree", "severity": 0.05, "ssim": 0.999, "area_a": 40, "area_b": 41,
         "subjects": ["3", "3"]},
        {"a": "1_5", "b": "3_5", "category": "disagree", "severity": 0.05, "ssim": 0.991, "area_a": 40,
         "area_b": 20, "subjects": ["1", "3"]},
    ]
    with ReviewStore(tmp_path / "r.sqlite") as s:
        q = build_queue(pairs, s.decisions())
        assert [it.key for it in q] == [("2_1", "2_9"), ("1_1", "1_2"), ("3_1", "3_2"), ("1_5", "3_5")]
        assert first_open(q) == ("2_1", "2_9")
        assert next_open(q, q[-1].key) == q[0].key  # wraps around
        assert len(filter_queue(q, QueueFilter(subjects=("3",)))) == 2  # either image's subject counts
        # a group decision holding both cases decides the pair; a later pair decision wins over it
        s.record_group_decision(["3_1", "3_2", "3_9"], "keep_both", "g")
        s.record_decision("3_1", "3_2", "needs_expert", "h")
        q = build_queue(pairs, s.decisions())
        assert q[2].state == "needs_expert"
        s.undo(q[2].decision.event_id, "h")
        q = build_queue(pairs, s.decisions())
        assert q[2].state == "decided" and q[2].decision.target_kind == "group"
        assert next_open(q, q[1].key) == q[3].key  # skips the decided pair
        # bulk proposals: keep the annotated image of undecided conflict pairs only
        props, n = bulk_proposals(q)
        assert {(p.a, p.b, p.decision, p.drop) for p in props} == {("2_1", "2_9", "keep_a", "2_9"),
                                                                  ("1_1", "1_2", "keep_a", "1_2")}
        assert n["conflict_pairs"] == 2 and n["undecided"] == 2
        apply_proposals(s, props, "bulk-user")
        q = build_queue(pairs, s.decisions())
        assert [it.state for it in q] == ["proposed", "proposed", "decided", "undecided"]
        assert progress_counts(q) == {"undecided": 1, "proposed": 2, "decided": 1, "needs_expert": 0, "total": 4,
                                      "fraction_decided": 0.25}
        assert bulk_proposals(q)[0] == []
        s.record_decision("1_1", "1_2", "keep_b", "rev",  # a reviewer overrides one proposal (having seen it)
                          base_event=s.decision_for("1_1", "1_2").event_id)
        assert undo_proposals(s, "bulk-user") == 1
        q = build_queue(pairs, s.decisions())
        assert [it.state for it in q] == ["undecided", "decided", "decided", "undecided"]
        hist = pair_history(s, "1_2", "1_1")
        assert [h["status"] for h in hist] == ["superseded", "in force"]
        assert [h["decision"] for h in hist] == ["keep_a", "keep_b"]
        hist = pair_history(s, "2_1", "2_9")
        assert [h["status"] for h in hist] == ["undone"]
    cases = [C(case_id=f"7_{i}", group_id="7") for i in (1, 2, 10, 11, 3)] + [C(case_id="8_2", group_id="8")]
    assert neighbours(cases, "7_10", "7", 2) == ["7_2", "7_3", "7_10", "7_11"]
    assert neighbours(cases, "8_2", "8", 2) == ["8_2"]


def test_proposals_are_not_decisions_until_a_person_confirms_them(env: SimpleNamespace, report) -> None:
    from engine.curation import apply_proposals, build_manifest, build_queue, bulk_proposals, confirm_proposals
    from engine.store.records import CONFIRM_NOTE

    with store_of(env) as s:
        props, _ = bulk_proposals(build_queue(report.pairs, s.decisions()))
        assert props
        apply_proposals(s, props, "carol")
        assert all(d.is_proposal for d in s.decisions().values())
        # "Decisions only": nobody decided anything, so nothing is dropped; the proposals are counted apart
        _, dropped, info = build_manifest(env.ds, s, report, "none")
        assert dropped == [] and info["n_unconfirmed_proposals"] == len(props) and info["decisions"] == {}
        # the rule's policy applies them, each marked as a proposal nobody confirmed
        _, dropped, info = build_manifest(env.ds, s, report, "drop-empty")
        assert info["dropped_by"]["proposal"] == len(props) and info["dropped_by"]["decision"] == 0
        assert {c for c, _ in dropped} == {p.drop for p in props}
        assert all("proposal" in why and "not confirmed" in why for _, why in dropped)
        # someone overrides one proposal meanwhile; the bulk confirmation leaves that pair alone
        first = props[0]
        s.record_decision(first.a, first.b, "keep_both", "rob", base_event=s.decision_for(first.a, first.b).event_id)
        assert confirm_proposals(s, "dave") == (len(props) - 1, 0)
        decs = s.decisions().values()
        assert not any(d.is_proposal for d in decs)
        assert sorted((d.reviewer, d.note) for d in decs) == sorted(
            [("rob", "")] + [("dave", CONFIRM_NOTE)] * (len(props) - 1))
        _, dropped, info = build_manifest(env.ds, s, report, "none")
        assert info["dropped_by"] == {"decision": len(props) - 1, "proposal": 0, "policy": 0}
        assert all("by dave" in why for _, why in dropped) and info["n_unconfirmed_proposals"] == 0


def test_undo_reaches_the_last_decision_after_the_page_moved_on(env: SimpleNamespace, report) -> None:
    at = ok(app(env).run())
    k = keys(queue(at))
    at.text_input(key=state.Review.REVIEWER).input("erin")
    ok(at.run())
    click(at, "review_d_keep_both")
    assert current(at) != k[0]  # moved on to the next pair waiting for a decision
    undo_last = at.button(key=state.Review.UNDO_LAST)
    assert k[0][0] in undo_last.label and "Keep both" in undo_last.label
    click(at, state.Review.UNDO_LAST)
    with store_of(env) as s:
        assert s.decision_for(*k[0]) is None
    assert current(at) == k[0]  # back on the pair it undid
    assert not [b for b in at.button if b.key == state.Review.UNDO_LAST]  # nothing left to undo elsewhere
