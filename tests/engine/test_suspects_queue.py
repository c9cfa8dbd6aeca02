"""The Mask editor's case queue ranked by the label-error finder (``case_queue(..., suspects=...)``).

Pure logic: case ids, a stand-in review store (only ``case_states()`` is read) and both forms
``suspects`` takes (a real :class:`SuspectReport` built from :class:`Suspect` records, and the
``{case_id: (score, type, first reason)}`` mapping).
"""

from __future__ import annotations

from types import SimpleNamespace

from engine.curation import QUEUE_WEIGHTS, case_queue
from engine.curation.suspects import Suspect, SuspectReport

IDS = ["1_1", "1_2", "1_3", "2_1", "2_2", "2_10"]


class States:
    """A review store stand-in: ``case_states()`` only."""

    def __init__(self, states: dict[str, tuple[str, str]]):
        self._s = {c: SimpleNamespace(state=s, reviewer=who) for c, (s, who) in states.items()}

    def case_states(self) -> dict:
        return self._s


def _report(rows: list[tuple[str, float, str, list[str]]]) -> SuspectReport:
    cases = [Suspect(cid, score, typ, reasons, "out-of-fold: test", True, {}, {}, None, "d", rank=i + 1)
             for i, (cid, score, typ, reasons) in enumerate(rows)]
    return SuspectReport(cases, "ds", {}, {}, {}, {})


REPORT = [("2_2", 0.91, "boundary", ["nerve: label boundary lies 6 px inside the model's", "second"]),
          ("1_3", 0.55, "empty", ["the label is empty where the model finds nerve"]),
          ("2_10", 0.30, "extra_region", ["a region the model does not support"]),
          ("1_1", 0.02, "boundary", [])]


def test_suspects_order_the_queue_by_score_with_type_and_first_reason() -> None:
    q = case_queue(IDS, None, suspects=_report(REPORT))
    assert [c for c, _, _ in q] == ["2_2", "1_3", "2_10", "1_1"]  # by score; cases with no suspect score left out
    w = QUEUE_WEIGHTS["suspect"]
    assert [s for _, s, _ in q] == [round(w * v, 6) for v in (0.91, 0.55, 0.30, 0.02)]
    assert q[0][2] == ["boundary: nerve: label boundary lies 6 px inside the model's"]  # type: first reason only
    assert q[1][2] == ["empty: the label is empty where the model finds nerve"]
    assert q[3][2] == ["boundary"]  # no reason: the type alone
    # the mapping form gives the same queue
    as_map = {cid: (score, typ, reasons[0] if reasons else "") for cid, score, typ, reasons in REPORT}
    assert case_queue(IDS, None, suspects=as_map) == q


def test_suspects_replace_the_dice_and_uncertainty_terms_but_keep_needs_fix_and_conflicts() -> None:
    dice = {"1_1": 0.1, "1_2": 0.2, "2_1": 0.0}           # 1 - Dice would rank 2_1, 1_1, 1_2 first
    unc = {"1_2": 0.9, "2_1": 0.8}                          # and flip-TTA would push 1_2 and 2_1
    dis = {"2_1": 0.4}                                      # model-vs-model disagreement stays
    pairs = [{"a": "1_2", "b": "2_10", "category": "conflict", "ssim": 0.995}]
    store = States({"1_2": ("needs_fix", "ann"), "1_3": ("accepted", "bob")})
    without = case_queue(IDS, store, pairs, dice, uncertainty=unc, disagreement=dis)
    why = {c: r for c, _, r in without}
    assert "model Dice 0.00" in why["2_1"] and "flip-TTA uncertainty 0.90" in why["1_2"]

    q = case_queue(IDS, store, pairs, dice, uncertainty=unc, disagreement=dis, suspects=_report(REPORT))
    scores = {c: s for c, s, _ in q}
    reasons = {c: r for c, _, r in q}
    text = "\n".join("; ".join(r) for r in reasons.values())
    assert "model Dice" not in text and "flip-TTA" not in text  # superseded by the finder's score
    w = QUEUE_WEIGHTS
    assert "1_3" not in scores  # accepted: out of the queue whatever the finder says
    # needs_fix and the conflict pair are still scored, on top of the finder's score where there is one
    assert scores["1_2"] == round(w["needs_fix"] + w["conflict"], 6)
    assert reasons["1_2"] == ["marked needs_fix by ann", "conflict pair with 2_10 (SSIM 0.995)"]
    assert scores["2_10"] == round(w["suspect"] * 0.30 + w["conflict"], 6)
    assert reasons["2_10"][0].startswith("extra_region: ") and reasons["2_10"][1].startswith("conflict pair")
    assert scores["2_1"] == round(w["models"] * 0.4, 6) and reasons["2_1"] == ["models disagree 0.40"]
    assert [c for c, _, _ in q] == ["1_2", "2_10", "2_2", "2_1", "1_1"]


def test_an_empty_report_still_supersedes_the_model_terms() -> None:
    q = case_queue(IDS, None, None, {"1_1": 0.2}, uncertainty={"1_2": 0.5}, suspects={})
    assert q == []
    assert case_queue(IDS, None, None, {"1_1": 0.2}, suspects=None)[0][2] == ["model Dice 0.20"]


def test_the_suspect_weight_can_be_overridden_and_unknown_cases_are_ignored() -> None:
    q = case_queue(IDS, None, suspects={"2_2": (0.5, "shifted", "moved by 4 px"), "nope": (0.9, "empty", "")},
                   weights={"suspect": 3.0})
    assert q == [("2_2", 1.5, ["shifted: moved by 4 px"])]
