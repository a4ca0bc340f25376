"""The book's honesty rules: verdicts read only what the data supports, rows describe the run's
own task, the failure classes, one parameters cell per rendered section."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tinytrace.experiments import classify_failure, failure_counts
from tinytrace.experiments.analysis import FAILURE_CLASSES, excluded_curve, measured, select_sft
from tinytrace.report import pages, paper
from tinytrace.report.nbkit import training_caption
from tinytrace.report.runner import hide_default_parameters
from tinytrace.report.tables import draws_table, failure_table, generator_comparison, setup_comparison
from tinytrace.report.verdicts import (
    NOT_COMPARABLE,
    NOT_REPRODUCED,
    REPRODUCED,
    bracket,
    own_sets,
    verdicts,
)

# a trace of the real format: the snippet, step blocks with the `@` line and its state, the final
TRACE = ("a = 1\nif a > 0:\n\tb = a\n#STEP\n@a = 1$\n#STEP\na = 1\n@if a > 0:$a?1\n\tb = a\n#STEP\n"
         "a = 1\nif a > 0:\n@\tb = a$a?1\n#STEP\na = 1\nif a > 0:\n\tb = a\n@^$a?1;b?1")


@pytest.mark.parametrize("prediction, kind", [
    (TRACE, None),
    (TRACE.replace("@\tb = a$a?1\n#STEP", "\tb = a\n#STEP", 1), "@ line (control flow)"),
    (TRACE.replace("\n\tb = a\n#STEP\na = 1\nif a > 0:\n@", "\nb = a\n#STEP\na = 1\nif a > 0:\n@", 1),
     "indentation (depth)"),
    (TRACE.replace("b?1", "b?2"), "final state"),
    (TRACE.replace("@if a > 0:$a?1", "@if a > 0:$a?2"), "state value"),
    (TRACE.replace("if a > 0", "if a < 0"), "snippet copy"),
    (TRACE[:30], "length"),
    (TRACE + "\n#STEP", "length"),
])
def test_classify_failure(prediction, kind):
    assert classify_failure(prediction, TRACE) == kind


# a depth-2 snippet: the base model of the book writes it back at depth 1, dropping the inner `if`
DEEP = ("@h = 3$\nif h > 0:\n\tif -5 > h:\n\t\te = -1\n#STEP\nh = 3\n@if h > 0:$h?3\n\tif -5 > h:\n"
        "\t\te = -1\n#STEP\nh = 3\nif h > 0:\n@\tif -5 > h:$h?3\n\t\te = -1\n#STEP\nh = 3\n"
        "if h > 0:\n\tif -5 > h:\n\t\te = -1\n@^$h?3")
DROPPED_IF = ("@h = 3$\nif h > 0:\n\te = -1\n#STEP\nh = 3\n@if h > 0:$h?3\n\te = -1\n#STEP\n"
              "h = 3\nif h > 0:\n@\te = -1$h?3\n#STEP\nh = 3\nif h > 0:\n\te = -1\n@^$h?3;e?-1")


def test_clip_rate_counts_the_failing_traces_that_stay_at_the_trained_depth():
    from tinytrace.experiments.analysis import clip_rate, max_indent

    reindented = DEEP.replace("\n\t\te = -1\n#STEP", "\n\te = -1\n#STEP", 1)
    wrong_value = DEEP.replace("@^$h?3", "@^$h?4")  # every line at its depth, the state wrong
    preds = [DEEP, DROPPED_IF, reindented, wrong_value]
    # the dropped `if` is a clip, though its first wrong token is a snippet copy
    assert [classify_failure(p, DEEP) for p in preds] == [
        None, "snippet copy", "indentation (depth)", "final state"]

    def rate(ps, depth=1):
        return clip_rate({"correct": [p == DEEP for p in ps],
                          "max_indent": max_indent(ps, [DEEP] * len(ps))}, depth)

    # [target, prediction]; reindented moves one line of many
    assert max_indent(preds, [DEEP] * 4) == [[2, 2], [2, 1], [2, 2], [2, 2]]
    assert max_indent([DEEP], [DROPPED_IF]) == [[1, 2]]
    assert rate(preds) == pytest.approx(1 / 3) and rate(preds[:2]) == 1.0  # the correct one: not counted
    assert rate(preds[2:]) == 0.0  # depth-2 lines written, if not all where they belong
    assert rate(preds, depth=2) is None  # no target deeper than 2: nothing to clip


def test_clip_table_is_p_by_depth_set_for_each_bound():
    from tinytrace.report.tables import clip_table

    rows = [{"p": p, "trained_depth": d, "test_set": ts, "clip_rate": c, "clip_rate_next": n}
            for p, d in ((0, 1), (10, 3))
            for ts, c, n in (("depth-0-1", None, None), ("depth-2", 1.0 if p == 0 else None, None),
                             ("depth-5", 0.25, 0.5))]
    t = clip_table(pd.DataFrame(rows))
    assert list(t.index) == [(0, 1), (10, 3)]
    assert t.loc[(0, 1), ("<= trained depth", "depth-2")] == 100.0
    assert t.loc[(10, 3), ("<= trained depth + 1", "depth-5")] == 50.0
    assert "depth-0-1" not in t.columns.get_level_values("test set")  # the training range


def test_failure_counts_has_every_class():
    counts = failure_counts([TRACE, TRACE.replace("b?1", "b?2")], [TRACE, TRACE])
    assert list(counts) == list(FAILURE_CLASSES) and counts["final state"] == 1
    assert sum(counts.values()) == 1


def _coverage(pcts, assignment, glob, allowed=0.97):
    rows = []
    for scope, ems in (("assignment", assignment), ("global", glob)):
        for p, e in zip(pcts, ems):
            rows += [{"scope": scope, "exclusion_pct": p, "test_set": "excluded", "exact_match": e},
                     {"scope": scope, "exclusion_pct": p, "test_set": "allowed", "exact_match": allowed}]
    return pd.DataFrame(rows)


def test_two_point_grid_yields_no_threshold_verdict():
    # the old logic read "global < 80% from 60%" off two points {60, 100}
    df = _coverage([60, 100], [0.9, 0.0], [0.5, 0.0])
    assert measured("pair_coverage", df)["global_below_80_from"] == 60
    v = verdicts("pair_coverage", df, "cpu")
    for key in ("assignment_excluded_above_80_until", "global_below_80_from", "assignment_collapse_at"):
        assert v[key]["verdict"] == NOT_COMPARABLE and "2 points" in v[key]["evidence"]


def test_untrained_coverage_models_are_not_comparable():
    v = verdicts("pair_coverage", _coverage([50, 90, 100], [0.03, 0.01, 0.0], [0.02, 0.0, 0.0],
                                            allowed=0.03), "cpu")
    assert v["global_below_80_from"]["verdict"] == NOT_COMPARABLE
    assert "needs a trained model" in v["global_below_80_from"]["evidence"]
    assert v["allowed_stays_high"]["verdict"] == NOT_REPRODUCED


def test_bracketed_knee_is_read():
    df = _coverage([50, 90, 95, 98, 100], [0.95, 0.9, 0.85, 0.6, 0.05], [0.9, 0.4, 0.2, 0.1, 0.0])
    v = verdicts("pair_coverage", df, "cpu")
    assert v["assignment_excluded_above_80_until"]["verdict"] == REPRODUCED
    assert v["assignment_decline_from"]["verdict"] == REPRODUCED  # between 95 and 98
    assert v["assignment_collapse_at"]["verdict"] == REPRODUCED
    assert v["global_below_80_from"]["verdict"] == REPRODUCED  # between 50 and 90 holds 60
    assert bracket([50, 90, 100], [0.9, 0.85, 0.1], 0.8) == (90, 100)
    assert bracket([50, 90], [0.9, 0.85], 0.8) == (90, None)
    assert bracket([50, 90], [0.5, 0.1], 0.8) == (None, 50)


def _base(id_em, longer, deeper, clip=None):
    return pd.DataFrame([{"test_set": "id", "exact_match": id_em, "clip_rate": None},
                         {"test_set": "longer", "exact_match": longer, "clip_rate": None},
                         {"test_set": "deeper", "exact_match": deeper, "clip_rate": clip}])


def test_base_findings_need_a_trained_model():
    v = verdicts("base", _base(0.45, 0.0, 0.0, 0.0), "cpu")
    assert v["id"]["verdict"] == NOT_REPRODUCED
    for key in ("longer", "deeper", "deeper_clipping"):
        assert v[key]["verdict"] == NOT_COMPARABLE and "45.0%" in v[key]["evidence"]
    v = verdicts("base", _base(0.99, 0.3, 0.0, 0.8), "cpu")
    assert {k: x["verdict"] for k, x in v.items()} == dict.fromkeys(
        ("id", "longer", "deeper", "deeper_clipping"), REPRODUCED)
    # at the paper's scale the longer number itself is compared
    assert verdicts("base", _base(0.99, 0.3, 0.0, 0.8), "paper")["longer"]["verdict"] == NOT_REPRODUCED


def test_fig12_compares_the_same_snippets():
    common = {"corpus": "10K", "corpus_snippets": 10_000, "epoch": 1, "subset": "full"}
    rows = [{**common, "edit": "none", "exact_match": 0.5}]
    rows += [{**common, "edit": e, "exact_match": 0.62}
             for e in ("variable_renaming", "neutral_operator")]
    df = pd.DataFrame(rows)
    # EM on the whole unaltered set is not the reference: no verdict without the same subset
    assert verdicts("id_robustness", df, "cpu")["full_test_matches"]["verdict"] == NOT_COMPARABLE
    df["base_same_subset"] = [None, 0.6, 0.61]
    v = verdicts("id_robustness", df, "cpu")["full_test_matches"]
    assert v["verdict"] == REPRODUCED and "2.0 points" in v["evidence"]


def test_the_early_training_row_also_shows_where_the_base_test_is_near_the_papers():
    """Fig. 3's epoch 1 of the second corpus has a ~40% base test in the paper; below its scale
    that point may be far higher. The evidence then also gives the corpus and epoch nearest
    ~40% (here under the row's 80%), and the verdict still reads the second corpus."""
    rows = []
    for corpus, n, epoch, base, edited in (("40K", 40_000, 1, 0.9, 0.97), ("20K", 20_000, 1, 0.79, 0.9),
                                           ("20K", 20_000, 2, 0.9, 0.95), ("10K", 10_000, 1, 0.36, 0.79)):
        common = {"corpus": corpus, "corpus_snippets": n, "epoch": epoch}
        rows += [{**common, "edit": "none", "subset": "full", "exact_match": base}]
        rows += [{**common, "edit": e, "subset": sub, "exact_match": edited if sub == "correct" else 0.5}
                 for e in ("variable_renaming", "neutral_operator") for sub in ("full", "correct")]
    df = pd.DataFrame(rows)
    v = verdicts("id_robustness", df, "cpu-long")["corpus2_epoch1_edited"]
    assert v["verdict"] == REPRODUCED and v["evidence"].startswith(
        "edited sets on the correctly traced snippets 90.0% (base test 79.0%)")
    assert v["evidence"].endswith("; nearest the paper's ~40% base test: the 10K corpus at "
                                  "epoch 1, edited sets 79.0% against a base test of 36.0%")
    # where the second corpus's first epoch is itself the nearest, or at the paper's scale: no clause
    near = df.copy()
    near.loc[(near["corpus"] == "20K") & (near["epoch"] == 1) & (near["edit"] == "none"), "exact_match"] = 0.4
    assert "nearest" not in verdicts("id_robustness", near, "cpu-long")["corpus2_epoch1_edited"]["evidence"]
    assert "nearest" not in verdicts("id_robustness", df, "paper")["corpus2_epoch1_edited"]["evidence"]


def test_generator_rows_say_what_they_were_computed_on():
    stats = pd.DataFrame({"n_tokens": [100, 120], "n_statements": [3, 4], "max_depth": [1, 1]})
    t = generator_comparison(stats, "cpu", described="the `cpu` ID task")
    assert set(t["scale"]) == {"the `cpu` ID task"} and "cpu" not in set(t["scale"])


def test_training_caption_describes_the_run():
    cpu = training_caption("cpu")
    assert "Muon" in cpu and "one phase" in cpu and "**The paper**" in cpu
    assert "two phases" in training_caption("paper") and "Muon" not in training_caption("paper")
    # the cpu loss departs from the paper's, and the caption says so; the paper's does not
    assert "state list" in cpu and "not in the paper" in cpu
    assert "state list" not in training_caption("paper")


def test_one_parameters_cell():
    nb = {"cells": [{"metadata": {"tags": ["parameters"]}}, {"metadata": {"tags": ["injected-parameters"]}},
                    {"metadata": {}}]}
    hide_default_parameters(nb)
    assert nb["cells"][0]["metadata"]["tags"] == ["parameters", "remove-cell"]
    assert "remove-cell" not in nb["cells"][1]["metadata"]["tags"]
    alone = {"cells": [{"metadata": {"tags": ["parameters"]}}]}  # not executed by papermill
    assert hide_default_parameters(alone)["cells"][0]["metadata"]["tags"] == ["parameters"]


def test_failure_table_and_clip_rate():
    df = _base(0.9, 0.5, 0.0, 0.75)
    df["n"] = 8
    for kind in FAILURE_CLASSES:
        df[f"fail: {kind}"] = [0, 1, 2 if kind == "indentation (depth)" else 0]
    t = failure_table(df)
    assert list(t.index) == ["id", "longer", "deeper"]
    assert t.loc["longer", "failed"] == len(FAILURE_CLASSES) and t.loc["deeper", "clip rate"] == "75.00%"
    with pytest.raises(ValueError, match=r"one base run's results.*\['deeper', 'id', 'longer'\]"):
        failure_table(pd.concat([df, df]))


def test_results_page_shows_verdicts(tmp_path):
    doc = {"notebook": "02_model_data_training", "scale": "cpu", "hardware": "CPU: x", "seed": 0,
           "date": "2026-12-04T00:00:00", "paper_vs_ours": [
               {"experiment": "base", "key": "epochs", "what": "base training epochs", "paper": 4,
                "this run": 1, "kind": "setup", "scale": "cpu"},
               # stored under an earlier label, with an empty evidence
               {"experiment": "base", "key": "train_hours", "paper": 1.5, "this run": 0.25,
                "what": "base training time on 4x A100 80GB, hours", "kind": "setup",
                "scale": "cpu", "evidence": None}],
           "results": {"base": _base(0.45, 0.0, 0.0, 0.0).to_dict("records")}}
    (tmp_path / "02_model_data_training.json").write_text(json.dumps(doc))
    page = pages.results_page(tmp_path)
    n = sum(1 for r in paper.REPORTED if r.experiment == "base" and r.kind != "setup")
    assert f"of the paper's {n} findings measured, 0 reproduced, 1 not reproduced, {n - 1} not comparable" in page
    assert "| verdict | evidence |" in page and "(setup)" in page
    assert "base ID EM 45.0% < 90.0%" in page
    hours = next(x for x in page.splitlines() if "| 0.25 |" in x)  # labelled as the paper module says
    assert hours.startswith(f"| {paper.reported('base', 'train_hours').what} |") and "None" not in hours
    assert "Scale `cpu` on CPU: x, seed 0, 2026-12-04.\n" in page  # results that name no commit
    doc.update(git_commit="0123456789abcdef", code_dirty=False)
    (tmp_path / "02_model_data_training.json").write_text(json.dumps(doc))
    assert "Scale `cpu` on CPU: x, seed 0, 2026-12-04, code at `0123456`.\n" in pages.results_page(tmp_path)
    doc["code_dirty"] = True
    (tmp_path / "02_model_data_training.json").write_text(json.dumps(doc))
    assert ", code at `0123456` with uncommitted edits.\n" in pages.results_page(tmp_path)


def test_a_finding_two_sections_share_counts_once_per_scale(tmp_path):
    """The base model's findings appear in 02 and 05: at one scale they are one model and count
    once; at two scales they are two models, and each scale's summary counts its own."""
    def doc(stem, scale, em):
        return {"notebook": stem, "scale": scale, "hardware": "CPU: x", "seed": 0,
                "date": "2026-12-04T00:00:00", "paper_vs_ours": [],
                "results": {"base": _base(em, 0.1, 0.0, 0.0).to_dict("records")}}

    n = sum(1 for r in paper.REPORTED if r.experiment == "base" and r.kind != "setup")
    for stem, scale in (("02_model_data_training", "cpu"), ("05_ood", "cpu")):
        (tmp_path / f"{stem}.json").write_text(json.dumps(doc(stem, scale, 0.45)))
    page = pages.results_page(tmp_path)
    assert page.count(f"of the paper's {n} findings measured") == 1
    (tmp_path / "05_ood.json").write_text(json.dumps(doc("05_ood", "cpu-long", 0.99)))
    page = pages.results_page(tmp_path)
    assert f"At `cpu` scale on CPU: x: of the paper's {n} findings measured, 0 reproduced" in page
    assert f"At `cpu-long` scale on CPU: x: of the paper's {n} findings measured" in page


def test_the_pre_trained_rows_of_g1_count_as_the_base_models(tmp_path):
    """G.1's pre-trained model is the base model, its row the one Sec. 4.3 quotes from the same
    Table 3: 06's three pre-trained findings count once with 02's, its fine-tuned ones apart."""
    base = _base(0.98, 0.05, 0.0, 1.0)
    sft = pd.concat([base.assign(model="pre-trained"),
                     base.assign(model="fine-tuned", data_size=64, sft_epochs=1,
                                 trainable_params=10)])
    for stem, exp, df in (("02_model_data_training", "base", base), ("06_ablations", "sft_lora", sft)):
        (tmp_path / f"{stem}.json").write_text(json.dumps(
            {"notebook": stem, "scale": "cpu", "hardware": "CPU: x", "seed": 0,
             "date": "2026-12-04T00:00:00", "paper_vs_ours": [],
             "results": {exp: df.to_dict("records")}}))
    n = sum(1 for r in paper.REPORTED if r.experiment in ("base", "sft_lora") and r.kind != "setup"
            and r.same_as is None)
    assert n == len([r for r in paper.REPORTED if r.experiment == "base" and r.kind != "setup"]) + 4
    assert f"of the paper's {n} findings measured" in pages.results_page(tmp_path)


def test_lora_evidence_gives_each_change_beside_the_papers():
    """The rules read the paper's conclusion (no large OOD gain, ID kept); the evidence says
    that a loss on longer snippets is not the paper's slight gain."""
    df = pd.concat([_base(0.98, 0.05, 0.0).assign(model="pre-trained"),
                    _base(0.98, 0.012, 0.0).assign(model="fine-tuned", data_size=64,
                                                    sft_epochs=1, trainable_params=10)])
    v = verdicts("sft_lora", df, "cpu-long")
    assert v["finetuned_longer"]["verdict"] == REPRODUCED
    assert v["finetuned_longer"]["evidence"].endswith(
        "no large OOD gain (-3.8 points; the paper: +3.0 points); this scale's longer set: 5-6 "
        "statements (the paper's: 11-17)")
    assert v["finetuned_id"]["evidence"].endswith("(no change; the paper: -0.8 points)")


def test_table3_fine_tuned_model_is_the_best_validation_loss_under_a_repeated_index():
    """App. G.1 keeps the fine-tuning run with the best validation loss (else the best ID EM);
    the results concatenated per run repeat their index, which must not mix up the rows."""
    def ft(size, loss, id_em):
        return _base(id_em, 0.05, 0.0).assign(model="fine-tuned", data_size=size, sft_epochs=1,
                                              best_val_loss=loss)
    df = pd.concat([_base(0.98, 0.05, 0.0).assign(model="pre-trained"),
                    ft(64, 0.30, 0.99), ft(128, 0.10, 0.95), ft(256, 0.20, 0.97)])
    kept = select_sft(df)
    assert sorted(kept["data_size"].dropna().unique()) == [128]
    assert (kept["model"] == "pre-trained").sum() == 3 and len(kept) == 6
    no_loss = select_sft(df.assign(best_val_loss=math.nan))
    assert sorted(no_loss["data_size"].dropna().unique()) == [64]
    # neither a loss nor an ID EM to choose by: of several runs none is Table 3's, of one it is
    longer_only = df[(df["model"] == "pre-trained") | (df["test_set"] != "id")].assign(
        best_val_loss=math.nan)
    assert (select_sft(longer_only)["model"] == "pre-trained").all()
    alone = longer_only[longer_only["data_size"].fillna(128) == 128]
    assert sorted(select_sft(alone)["data_size"].dropna().unique()) == [128]


def test_evidence_names_the_scales_own_sets_where_they_are_not_the_papers():
    """The rows name the paper's sets (11-17 statements, depth 3-4): below the paper's task the
    evidence says which sets the numbers are of; at the paper's sets it adds nothing."""
    df = _base(0.98, 0.05, 0.0, 1.0)
    small = verdicts("base", df, "cpu-long")
    assert small["longer"]["evidence"].endswith(
        "; this scale's longer set: 5-6 statements (the paper's: 11-17)")
    assert small["deeper"]["evidence"] == (
        "deeper 0.0%; this scale's deeper set: depth 2-3 in 3-4 statements, ID depth <= 1 (the "
        "paper's: depth 3-4 in 5-10, <= 2)")
    pe = verdicts("pe_ablation", _pe({"ape": (0.98, 0.07, 0.0), "rpe": (0.99, 0.0, 0.0),
                                      "rpb": (0.98, 0.05, 0.0)}), "cpu-long")
    for enc in ("ape", "rpe", "rpb"):
        assert pe[f"{enc}_longer"]["evidence"].endswith("(the paper's: 11-17)")
        assert pe[f"{enc}_deeper"]["evidence"].endswith("(the paper's: depth 3-4 in 5-10, <= 2)")
    for scale in ("gpu", "paper"):
        assert own_sets(scale) == {}
        assert not any("this scale's" in v["evidence"] for v in verdicts("base", df, scale).values())
    renamed = pd.DataFrame([{"experiment": "depth_curriculum", "p": p, "test_set": t,
                             "exact_match": 0.95, "n": 8} for p in (0, 10)
                            for t in ["depth-0-2", "depth-6", "depth-7", "depth-8", "depth-9"]])
    assert not any("this scale's" in v["evidence"]
                   for v in verdicts("depth_curriculum", renamed, "gpu").values())


def test_clipping_evidence_says_where_the_failures_first_go_wrong():
    df = _base(0.98, 0.05, 0.0, 1.0)
    df["fail: indentation (depth)"], df["fail: snippet copy"] = [0, 3, 2], [0, 1, 510]
    evidence = verdicts("base", df, "cpu")["deeper_clipping"]["evidence"]
    assert evidence.endswith("first wrong token: an indentation in 2, a snippet copy "
                             "(e.g. a dropped `if` line) in 510; this scale's deeper set: depth "
                             "2-3 in 3-4 statements, ID depth <= 1 (the paper's: depth 3-4 in "
                             "5-10, <= 2)")
    assert "first wrong" not in verdicts("base", _base(0.98, 0.05, 0.0, 1.0), "cpu")[
        "deeper_clipping"]["evidence"]


def test_brittleness_needs_two_corpora_and_shrinks_with_size():
    def rows(corpus, size, em):
        return [{"corpus": corpus, "corpus_snippets": size, "epoch": 2, "subset": "correct",
                 "edit": e, "exact_match": em} for e in ("variable_renaming", "neutral_assignment")]

    one = pd.DataFrame(rows("10K", 10_000, 0.9))
    assert verdicts("id_robustness", one, "cpu")["larger_corpora_less_brittle"]["verdict"] == NOT_COMPARABLE
    shrinks = pd.DataFrame(rows("10K", 10_000, 0.95) + rows("2K", 2_000, 0.7))
    assert verdicts("id_robustness", shrinks, "cpu")["larger_corpora_less_brittle"]["verdict"] == REPRODUCED
    grows = pd.DataFrame(rows("10K", 10_000, 0.7) + rows("2K", 2_000, 0.95))
    assert verdicts("id_robustness", grows, "cpu")["larger_corpora_less_brittle"]["verdict"] == NOT_REPRODUCED


def test_robustness_readings_do_not_depend_on_the_results_index():
    """Results concatenated per corpus repeat their index; every reading is of values, so a
    repeated index gives the same numbers, verdicts and evidence."""
    rows = [{"corpus": c, "corpus_snippets": n, "epoch": 2, "subset": "correct", "edit": e,
             "exact_match": em - drop}
            for c, n, em in (("40K", 40_000, 0.99), ("20K", 20_000, 0.95), ("10K", 10_000, 0.9))
            for e, drop in (("variable_renaming", 0.01), ("neutral_assignment", 0.2))]
    df = pd.DataFrame(rows)
    repeated = df.set_axis([0] * len(df))
    assert measured("id_robustness", df)["neutral_assignment_drop"] == (
        "lowest edit on the smaller corpora: 10K: neutral_assignment")
    assert measured("id_robustness", repeated) == measured("id_robustness", df)
    assert verdicts("id_robustness", repeated, "cpu-long") == verdicts("id_robustness", df, "cpu-long")


SECTIONS = Path(__file__).resolve().parents[1] / "book" / "sections"


@pytest.mark.parametrize("section", sorted(p.name for p in SECTIONS.glob("0[2-6]_*.json")))
def test_committed_verdicts_do_not_depend_on_row_order_or_index(section):
    """Every reading is of values: the committed sections' results, shuffled, or shuffled with
    every row labelled 0, give the same verdicts and evidence."""
    doc = json.loads((SECTIONS / section).read_text())
    experiments = {r["experiment"] for r in doc["paper_vs_ours"]} & set(doc["results"])
    assert experiments
    for experiment in sorted(experiments):
        df = pd.DataFrame(doc["results"][experiment])
        expected = verdicts(experiment, df, doc["scale"])
        shuffled = df.sample(frac=1.0, random_state=0)
        assert verdicts(experiment, shuffled, doc["scale"]) == expected
        assert verdicts(experiment, shuffled.set_axis([0] * len(df)), doc["scale"]) == expected


def _pe(ems):
    return pd.DataFrame([{"model": pe, "test_set": ts, "exact_match": e}
                         for pe, row in ems.items() for ts, e in zip(("id", "longer", "deeper"), row)])


def test_pe_ablation_reads_the_order_and_says_what_rpe_was_compared_to():
    # the cpu book's Table 4: RPE is not the weakest ID, APE leads on longer
    v = verdicts("pe_ablation", _pe({"ape": (0.949, 0.062, 0.0), "rpe": (0.957, 0.023, 0.0),
                                     "rpb": (0.941, 0.014, 0.0)}), "cpu")
    assert v["rpe_id"]["verdict"] == NOT_REPRODUCED
    assert v["rpe_id"]["evidence"].startswith("RPE 95.7% vs APE 94.9% and RPB 94.1%")
    assert v["ape_longer"]["verdict"] == REPRODUCED and v["rpb_longer"]["verdict"] == NOT_REPRODUCED
    assert all(v[f"{pe}_deeper"]["verdict"] == REPRODUCED for pe in ("ape", "rpe", "rpb"))
    # the paper's order: RPE weakest ID and on longer
    v = verdicts("pe_ablation", _pe({"ape": (1.0, 0.44, 0.0), "rpe": (0.83, 0.13, 0.0),
                                     "rpb": (1.0, 0.25, 0.0)}), "cpu")
    assert {k: x["verdict"] for k, x in v.items()} == dict.fromkeys(v, REPRODUCED)
    # an untrained reference model makes every row not comparable
    v = verdicts("pe_ablation", _pe({"ape": (0.5, 0.0, 0.0), "rpe": (0.6, 0.0, 0.0),
                                     "rpb": (0.7, 0.0, 0.0)}), "cpu")
    assert {x["verdict"] for x in v.values()} == {NOT_COMPARABLE}


def test_coverage_lines_are_shares_of_the_base_model_below_paper_scale():
    """With the reference model's EM on the excluded-pairs sets (rows ``excluded-base``), the 80% and
    20% lines are read as shares of it below the paper's scale, and as numbers at its scale."""
    pcts = [60, 90, 100]
    df = _coverage(pcts, [0.78, 0.70, 0.05], [0.6, 0.3, 0.0])
    ref = [{"scope": s, "exclusion_pct": p, "test_set": "excluded-base", "exact_match": 0.84}
           for s in ("assignment", "global") for p in pcts]
    absolute = verdicts("pair_coverage", df, "cpu")
    assert absolute["assignment_excluded_above_80_until"]["verdict"] == NOT_REPRODUCED
    assert "at or below 80% from the first point" in absolute["assignment_excluded_above_80_until"]["evidence"]
    with_ref = pd.concat([df, pd.DataFrame(ref)], ignore_index=True)
    v = verdicts("pair_coverage", with_ref, "cpu")
    # 0.78 / 0.84 = 93%, 0.70 / 0.84 = 83%, 0.05 / 0.84 = 6%: above the line up to 90%
    assert v["assignment_excluded_above_80_until"]["verdict"] == REPRODUCED
    assert v["assignment_decline_from"]["verdict"] == REPRODUCED
    assert v["assignment_collapse_at"]["verdict"] == REPRODUCED
    ev = v["assignment_excluded_above_80_until"]["evidence"]
    assert "share of the reference model's" in ev and "90%: 83.3% (70.0% of 84.0%)" in ev
    assert measured("pair_coverage", with_ref, relative=True)["assignment_excluded_above_80_until"] == 90
    assert measured("pair_coverage", with_ref)["assignment_decline_from"] == 60  # as numbers
    # global: 0.6 / 0.84 = 71% is already below the line at the first point, the paper's 60%:
    # the decline is at or before it, which the grid cannot place
    assert v["global_below_80_from"]["verdict"] == NOT_COMPARABLE
    assert "does not bracket" in v["global_below_80_from"]["evidence"]
    # a first point before the paper's threshold that is already below the line contradicts it
    early = pd.concat([df, pd.DataFrame(ref)], ignore_index=True).replace({"exclusion_pct": {60: 30}})
    g = verdicts("pair_coverage", early, "cpu")["global_below_80_from"]
    assert g["verdict"] == NOT_REPRODUCED and "already at or below 80% at 30%" in g["evidence"]
    # below the paper's scale without the reference, the 80% line is not the paper's: no verdict
    assert absolute["assignment_decline_from"]["verdict"] == NOT_COMPARABLE
    assert "no reference model's EM" in absolute["assignment_decline_from"]["evidence"]
    g = verdicts("pair_coverage", early[early["test_set"] != "excluded-base"], "cpu")
    assert g["global_below_80_from"]["verdict"] == NOT_COMPARABLE
    # at the paper's scale the numbers are the lines: 78% at 60%, before the paper's 98% decline
    p = verdicts("pair_coverage", df, "paper")["assignment_decline_from"]
    assert p["verdict"] == NOT_REPRODUCED and "before the paper's threshold" in p["evidence"]
    # at the paper's scale the paper's numbers are the lines, reference or not
    p = verdicts("pair_coverage", with_ref, "paper")
    assert p["assignment_excluded_above_80_until"] == absolute["assignment_excluded_above_80_until"]


def test_a_point_drawn_more_than_once_is_read_pooled_over_its_draws():
    """Three draws of the global 10% point (seed column): one below the 80% line of the
    reference, the pooled share (mean EM over mean reference EM) above it."""
    rows = []
    for seed, ex, ref in ((0, 0.656, 0.834), (1, 0.674, 0.781), (2, 0.844, 0.836), (0, 0.4, 0.8), (0, 0.1, 0.8)):
        pct = 10 if ex > 0.6 else 60 if ex > 0.2 else 90
        for scope in ("assignment", "global"):
            rows += [{"scope": scope, "exclusion_pct": pct, "seed": seed, "test_set": t, "exact_match": v}
                     for t, v in (("allowed", 0.96), ("excluded", ex), ("excluded-base", ref))]
    df = pd.DataFrame(rows)
    pcts, ems, refs, shares = excluded_curve(df, "global")
    assert pcts == [10, 60, 90] and shares[0] == pytest.approx((0.656 + 0.674 + 0.844) / (0.834 + 0.781 + 0.836))
    v = verdicts("pair_coverage", df, "cpu")["global_below_80_from"]
    assert v["verdict"] == REPRODUCED and "declines between 10% and 60%" in v["evidence"]
    assert "10%: 88.7% (72.5% of 81.7%, pooled over 3 draws, each 78.7% to 101.0%)" in v["evidence"]
    assert "60%: 50.0% (40.0% of 80.0%)," in v["evidence"]
    # the reading rests on a point whose draws straddle the line: the evidence says so
    split = "the draws at 10% (78.7% to 101.0%) lie on both sides of the 80% line"
    assert split in v["evidence"] and v["evidence"].count("both sides") == 1
    assert split in verdicts("pair_coverage", df, "cpu")["assignment_decline_from"]["evidence"]
    # the results page counts such verdicts beside the totals
    rows = list(verdicts("pair_coverage", df, "cpu").values())
    assert pages._counts_text(rows) == (
        "2 reproduced, 3 not reproduced, 0 not comparable at this scale (3 of them, 1 reproduced, "
        "2 not reproduced, read a point whose draws lie on both sides of the line: more draws "
        "could change them; see their evidence)")
    # a draw exactly at the line counts as below it
    at = df.copy()
    at.loc[(at["seed"] == 0) & (at["test_set"] == "excluded") & (at["exclusion_pct"] == 10),
           "exact_match"] = 0.8 * 0.834
    assert "the draws at 10% (80.0% to 101.0%) lie on both sides" in verdicts(
        "pair_coverage", at, "cpu")["global_below_80_from"]["evidence"]
    # and not where every draw lies on one side (the first draw lifted above the line)
    above = df.copy()
    above.loc[(above["seed"] == 0) & (above["test_set"] == "excluded") & (above["exclusion_pct"] == 10),
              "exact_match"] = 0.7
    v_above = verdicts("pair_coverage", above, "cpu")
    assert v_above["global_below_80_from"]["verdict"] == REPRODUCED
    assert not [k for k, x in v_above.items() if "both sides" in x["evidence"]]
    assert "10%: 72.5% (pooled over 3 draws, each 65.6% to 84.4%)" in verdicts(
        "pair_coverage", df[df["test_set"] != "excluded-base"], "paper")["global_below_80_from"]["evidence"]
    one = verdicts("pair_coverage", df[df["seed"] == 0], "cpu")["global_below_80_from"]
    assert one["verdict"] == NOT_REPRODUCED and "already at or below 80% at 10%" in one["evidence"]
    t = draws_table(df)
    assert list(t.loc[("global", 10)].index) == ["0", "1", "2", "pooled"]
    assert t.loc[("global", 10, "pooled"), "share of the reference (%)"] == 88.7
    assert t.loc[("global", 10, "0"), "share of the reference (%)"] == 78.7
    assert draws_table(df[df["seed"] == 0]).empty
    # a draw whose allowed-pairs row is missing reads n/a there, the rest of its row stays
    gone = df[~((df["seed"] == 1) & (df["test_set"] == "allowed") & (df["exclusion_pct"] == 10))]
    row = draws_table(gone).loc[("global", 10, "1")]
    assert math.isnan(row["allowed EM (%)"]) and row["excluded EM (%)"] == 67.4
    none = df[~((df["test_set"] == "allowed") & (df["exclusion_pct"] == 10))]
    assert math.isnan(draws_table(none).loc[("global", 10, "pooled"), "allowed EM (%)"])


def test_a_reading_names_every_point_before_its_line_whose_draws_straddle_it():
    """The collapse reads the grid up to its first point below 20%: a point before that one
    whose draws lie on both sides of the line is named (its pooled mean keeps it above) along
    with the crossing point itself."""
    rows = []
    for pct, seed, share in ((10, 0, 0.9), (60, 0, 0.1), (60, 1, 0.5), (90, 0, 0.5),
                             (100, 0, 0.05), (100, 1, 0.15), (100, 2, 0.3)):
        rows += [{"scope": "assignment", "exclusion_pct": pct, "seed": seed, "test_set": t,
                  "exact_match": v} for t, v in (("allowed", 0.96), ("excluded", 0.8 * share),
                                                 ("excluded-base", 0.8))]
    v = verdicts("pair_coverage", pd.DataFrame(rows), "cpu")
    collapse = v["assignment_collapse_at"]
    assert collapse["verdict"] == REPRODUCED  # pooled: 30% at 60%, 16.7% at 100%, the paper's
    assert "below 20.0% from 100%" in collapse["evidence"]
    assert ("the draws at 60% (10.0% to 50.0%), 100% (5.0% to 30.0%) lie on both sides of the "
            "20% line" in collapse["evidence"])
    # the 80% line: first at or below from 60%, where the draws (10% and 50%) do not straddle it
    assert "both sides" not in v["assignment_decline_from"]["evidence"]


def test_curriculum_findings_leave_out_runs_below_the_trained_bar():
    """The AMD EPYC render of the book's 05 (cpu-long): the p = 50 run traces 84.6% of its own
    test (< 90%), so the p >= 1 rows read the p = 10 run only (its depth-2/3 minimum 90.8%, not
    p = 50's 90.4%), and say so."""
    ems = {0: (0.923828, 0, 0, 0, 0), 10: (0.914062, 0.908203, 0.923828, 0.0625, 0),
           50: (0.845703, 0.904297, 0.947266, 0.0078125, 0)}
    df = pd.DataFrame([{"experiment": "depth_curriculum", "p": p, "test_set": t, "exact_match": e,
                        "n": 512} for p, row in ems.items()
                       for t, e in zip(["depth-0-1", "depth-2", "depth-3", "depth-4", "depth-5"], row)])
    m = measured("depth_curriculum", df, relative=True)
    assert m["depth67_p1"] == pytest.approx(0.908203, abs=1e-6) and m["depth8_best"] == 0.0625
    v = verdicts("depth_curriculum", df, "cpu-long")
    assert v["depth67_p1"]["verdict"] == REPRODUCED and "90.8%" in v["depth67_p1"]["evidence"]
    for key in ("depth67_p1", "depth8_best", "depth9"):
        assert "p = 50 left out: its own ID EM 84.6% < 90.0%" in v[key]["evidence"], key
    assert v["depth8_best"]["evidence"].startswith("6.2% vs the paper's 99.4%")
    # the rows name the paper's depths; the evidence names the ones that stand for them here
    assert v["depth6_p0"]["evidence"].endswith("; this scale's depth 2 (the paper's 6)")
    assert v["depth67_p1"]["evidence"].endswith("; this scale's depths 2 and 3 (the paper's 6 and 7)")
    assert v["depth8_best"]["evidence"].endswith("; this scale's depth 4 (the paper's 8)")
    assert v["depth9"]["evidence"].endswith("; this scale's depths 4 and 5 (the paper's 8 and 9)")
    # depth 9 must be 20 points below the best depth 8: with depth 8 at 6.2% nothing can pass
    # (the floor 05's text names); with depth 8 at 50% the same depth 9 does
    assert v["depth9"]["verdict"] == NOT_REPRODUCED
    assert v["depth9"]["evidence"].startswith(
        "best over p >= 1: 0.0% vs depth-8's 6.2% (cannot pass: it must be 20 points below")
    deep = df.copy()
    deep.loc[(deep["p"] == 10) & (deep["test_set"] == "depth-4"), "exact_match"] = 0.5
    deep9 = verdicts("depth_curriculum", deep, "cpu-long")["depth9"]
    assert deep9["verdict"] == REPRODUCED and "cannot pass" not in deep9["evidence"]
    # the p = 0 run is no candidate for the depth-8 and depth-9 rows (Sec. 4.3.1: depth 8 once
    # depths 6-7 are trained), even where it traces more of depth 4 than the p >= 1 runs
    more = df.copy()
    more.loc[(more["p"] == 0) & (more["test_set"] == "depth-4"), "exact_match"] = 0.5
    assert measured("depth_curriculum", more, relative=True)["depth8_best"] == 0.0625
    # no run with p >= 1 trained enough (the Intel Xeon 1-epoch render: 87.7% and 88.9%): the
    # p >= 1, depth-8 and depth-9 rows are not comparable, not read off the p = 0 run alone
    low = df.copy()
    low.loc[(low["p"] >= 1) & (low["test_set"] == "depth-0-1"), "exact_match"] = 0.5
    v = verdicts("depth_curriculum", low, "cpu-long")
    for key in ("depth67_p1", "depth8_best", "depth9"):
        assert v[key]["verdict"] == NOT_COMPARABLE, key
        assert "no run with p >= 1 reaches 90.0%" in v[key]["evidence"], key
    assert v["depth6_p0"]["verdict"] == NOT_REPRODUCED


def test_setup_table_reads_the_runs_training_tokens(tmp_path):
    """The paper's corpus tokens (933M, Sec. 3.4) beside the tokens of the run's training
    split, from its records; a run without them reads n/a, not a guess."""
    run = tmp_path / "run-x"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"data": {"config": "data", "train_tokens": 29_894_613}}))
    (run / "log.jsonl").write_text('{"time": 0}\n{"time": 1800}\n')
    rows = setup_comparison("cpu-long", run).set_index("key")["this run"]
    assert rows["corpus_tokens"] == 29_894_613 and rows["train_hours"] == 0.5
    (run / "run.json").unlink()
    assert math.isnan(setup_comparison("cpu-long", run).set_index("key").loc["corpus_tokens", "this run"])
    # a log still being written may end in half a line: the hours come from the whole lines
    (run / "log.jsonl").write_text('{"time": 0}\n{"time": 1800}\n{"time": 36')
    assert setup_comparison("cpu-long", run).set_index("key").loc["train_hours", "this run"] == 0.5


def test_a_number_the_results_lack_is_not_comparable_not_a_failed_comparison():
    """A test set, model or run missing from the results (a partial frame) reads NaN, which
    every comparison fails: the finding is then not comparable and says what is missing."""
    base = verdicts("base", _base(0.98, 0.05, 0.0, 1.0).iloc[:1], "cpu-long")
    assert base["id"]["verdict"] == REPRODUCED
    for key in ("longer", "deeper"):
        assert base[key] == {"verdict": NOT_COMPARABLE, "evidence": f"{key} EM not measured"}
    assert verdicts("base", _base(0.98, 0.05, 0.0).iloc[1:], "cpu")["id"]["verdict"] == NOT_COMPARABLE
    pe = _pe({"ape": (0.98, 0.07, 0.0), "rpe": (0.99, 0.0, 0.0), "rpb": (0.98, 0.05, 0.0)})
    v = verdicts("pe_ablation", pe[pe["model"] != "rpe"], "cpu-long")
    assert v["rpe_id"] == {"verdict": NOT_COMPARABLE, "evidence": "RPE ID EM not measured"}
    assert v["ape_longer"]["verdict"] == NOT_COMPARABLE and v["rpe_deeper"]["verdict"] == NOT_COMPARABLE
    assert v["ape_id"]["verdict"] == REPRODUCED and v["rpb_deeper"]["verdict"] == REPRODUCED
    v = verdicts("pe_ablation", pe[pe["test_set"] != "longer"], "cpu-long")
    assert {v[f"{x}_longer"]["verdict"] for x in ("ape", "rpe", "rpb")} == {NOT_COMPARABLE}
    sft = _base(0.98, 0.05, 0.0).assign(model="pre-trained")
    v = verdicts("sft_lora", sft, "cpu-long")
    assert v["finetuned_longer"] == {"verdict": NOT_COMPARABLE,
                                     "evidence": "fine-tuned longer EM not measured"}
    assert v["pretrained_longer"]["verdict"] == REPRODUCED  # the pre-trained model is measured


def test_the_curriculum_reads_the_p0_run_itself():
    """Sec. 4.3.1's depth-6 row is the p = 0 run's: without it the row is not comparable, not
    read off the smallest p the results have."""
    df = pd.DataFrame([{"p": p, "test_set": t, "exact_match": 0.96, "n": 512} for p in (0, 10)
                       for t in ["depth-0-1", "depth-2", "depth-3", "depth-4", "depth-5"]])
    df.loc[df["p"] == 0, "exact_match"] = [0.95, 0.0, 0.0, 0.0, 0.0]
    assert measured("depth_curriculum", df)["depth6_p0"] == 0.0
    later = df[df["p"] != 0]
    assert "depth6_p0" not in measured("depth_curriculum", later)
    v = verdicts("depth_curriculum", later, "cpu-long")
    assert v["depth6_p0"] == {"verdict": NOT_COMPARABLE,
                              "evidence": "curriculum (p = 0) ID EM not measured"}
    # the p >= 1 rows read the p >= 1 runs, with or without the p = 0 run
    assert v["depth67_p1"] == verdicts("depth_curriculum", df, "cpu-long")["depth67_p1"]
    assert v["depth67_p1"]["verdict"] == REPRODUCED
    # the p = 0 run without its depth-6 (here depth-2) test: not measured, at any scale
    no_d6 = df[~((df["p"] == 0) & (df["test_set"] == "depth-2"))]
    for scale in ("cpu-long", "paper"):
        assert verdicts("depth_curriculum", no_d6, scale)["depth6_p0"] == {
            "verdict": NOT_COMPARABLE, "evidence": "p = 0 depth-2 EM not measured"}


def _robustness(ems: dict, epochs=(1, 2)) -> pd.DataFrame:
    """Robustness rows: corpus -> {edit: EM on the correctly traced snippets} at each epoch,
    base test 0.9."""
    rows = []
    for corpus, by_edit in ems.items():
        common = {"corpus": corpus, "corpus_snippets": int(float(corpus[:-1]) * 1000)}
        for epoch in epochs:
            rows.append({**common, "epoch": epoch, "edit": "none", "subset": "full", "exact_match": 0.9})
            rows += [{**common, "epoch": epoch, "edit": e, "subset": "correct", "exact_match": em}
                     for e, em in by_edit.items()]
    return pd.DataFrame(rows)


def test_the_lowest_edit_names_every_tie_and_reads_each_corpus_at_its_last_epoch():
    """Sec. 4.1: neutral assignment drops most on the smaller corpora. Tied edits are all
    named, whatever the row order; a corpus whose results stop at an earlier epoch is read
    there, and the evidence says which epoch; Fig. 3's row needs epoch 1 itself."""
    edits = lambda na, vr: {"neutral_assignment": na, "variable_renaming": vr}  # noqa: E731
    df = _robustness({"40K": edits(0.99, 0.99), "20K": edits(0.95, 0.97), "10K": edits(0.9, 0.9)})
    v = verdicts("id_robustness", df, "cpu-long")["neutral_assignment_drop"]
    # tied for the lowest: neutral assignment drops as much as any edit, and more than none
    assert v["evidence"] == "lowest edit on the smaller corpora: 10K: neutral_assignment = variable_renaming"
    assert v["verdict"] == NOT_REPRODUCED  # the only edits tie: no edit drops more than another
    three = _robustness({"40K": {**edits(0.99, 0.99), "neutral_operator": 1.0},
                         "20K": {**edits(0.95, 0.97), "neutral_operator": 1.0},
                         "10K": {**edits(0.9, 0.9), "neutral_operator": 1.0}})
    v = verdicts("id_robustness", three, "cpu-long")["neutral_assignment_drop"]
    assert v["verdict"] == REPRODUCED and v["evidence"].endswith("neutral_assignment = variable_renaming")
    assert verdicts("id_robustness", three.iloc[::-1], "cpu-long")["neutral_assignment_drop"] == v
    # results still coming in: the smallest corpus has only epoch 1, read there, not left out
    partial = pd.concat([three[three["corpus"] != "10K"],
                         _robustness({"10K": {**edits(0.8, 0.9), "neutral_operator": 1.0}}, epochs=(1,))])
    v = verdicts("id_robustness", partial, "cpu-long")
    assert v["neutral_assignment_drop"]["evidence"].endswith("10K (epoch 1): neutral_assignment")
    assert v["larger_corpora_less_brittle"]["evidence"].endswith(
        "40K (epoch 2): 0.7%, 20K (epoch 2): 2.7%, 10K (epoch 1): 10.0%")
    assert "(epoch" not in verdicts("id_robustness", three, "cpu-long")[
        "larger_corpora_less_brittle"]["evidence"]
    one = three[three["edit"].isin(["none", "neutral_assignment"])]
    assert verdicts("id_robustness", one, "cpu-long")["neutral_assignment_drop"]["verdict"] == NOT_COMPARABLE
    # Fig. 3's row is epoch 1 of the second corpus: without it, not comparable
    late = three[three["epoch"] == 2]
    assert verdicts("id_robustness", late, "cpu-long")["corpus2_epoch1_edited"] == {
        "verdict": NOT_COMPARABLE, "evidence": "no base test at epoch 1 of the second corpus"}


def test_the_coverage_gate_reads_every_draw_of_the_first_point():
    """Whether the runs are trained enough is read off the mean allowed-pairs EM of the first
    grid point's draws, whichever draw comes first in the results."""
    df = _coverage([60, 90, 100], [0.9, 0.5, 0.1], [0.5, 0.3, 0.0]).assign(seed=0)
    again = df[df["exclusion_pct"] == 60].assign(seed=1)
    again.loc[again["test_set"] == "allowed", "exact_match"] = 0.8  # 0.97 and 0.8: mean 0.885
    both = pd.concat([again, df], ignore_index=True)
    v = verdicts("pair_coverage", both, "paper")
    assert v["global_below_80_from"]["verdict"] == NOT_COMPARABLE
    assert "mean over its draws) ID EM 88.5%" in v["global_below_80_from"]["evidence"]
    assert verdicts("pair_coverage", both.iloc[::-1], "paper") == v
    one = verdicts("pair_coverage", df[df["scope"] == "global"], "paper")["allowed_stays_high"]
    assert one["evidence"].startswith("lowest allowed-pairs EM 97.0% over the global scope and")
