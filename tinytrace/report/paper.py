"""Every number the TinyTracing paper states, as data, with the section that states it.

Notebooks and the book print "paper vs this run" tables from here, never from typed text.
Exact match (EM) values are fractions in [0, 1]; the paper's figures (3, 4a, 4b, 12, 13) are
not available as data, only the numbers quoted in its prose.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd


@dataclass(frozen=True)
class Reported:
    experiment: str  # the tinytrace experiment name it belongs to
    key: str  # a stable identifier
    what: str  # a sentence a reader understands
    value: float | str | None  # a number where the paper gives one
    section: str  # where the paper says it
    kind: str = "exact_match"  # exact_match | threshold | count | setup
    # (experiment, key) of the same number of the same table stated as another finding: one
    # finding, counted once in the book's totals
    same_as: tuple[str, str] | None = None


REPORTED: list[Reported] = [
    # setup (Sec. 3, App. C)
    Reported("base", "corpus_snippets", "base corpus snippets", 3_000_000, "3.2, 3.4", "setup"),
    Reported("base", "corpus_tokens", "base corpus tokens", 933_000_000, "3.4", "setup"),
    Reported("base", "model_params", "model parameters (approx.)", 20_000_000, "3.1, C.3", "setup"),
    Reported("base", "epochs", "base training epochs", 4, "3.4", "setup"),
    Reported("base", "train_hours", "base training time, hours (the paper: 4x A100 80GB; "
             "this run: the hardware the section ran on)", 1.5, "3.4", "setup"),
    Reported("base", "test_size", "examples per test set", 1024, "3.4, 4.3", "setup"),
    # base model and OOD (Sec. 3.4, 4.3)
    Reported("base", "id", "base model, ID test", 1.0, "3.4, 4.3"),
    Reported("base", "longer", "base model, OOD longer (11-17 statements)", 0.4365, "4.3, Table 3"),
    Reported("base", "deeper", "base model, OOD deeper (depth 3-4)", 0.0, "4.3, Table 3"),
    Reported("base", "deeper_clipping", "deeper failures: lines at depth 3-4 clipped to depth 2",
             "qualitative", "4.3", "threshold"),
    # ID robustness (Sec. 4.1, App. E)
    Reported("id_robustness", "corpus2_epoch1_base", "1.5M corpus, epoch 1: base test EM (approx.)",
             0.40, "4.1, Fig. 3"),
    Reported("id_robustness", "corpus2_epoch1_edited", "1.5M corpus, epoch 1: edited sets EM (approx.)",
             0.90, "4.1, Fig. 3"),
    Reported("id_robustness", "neutral_assignment_drop",
             "neutral assignment drops most on the 750K and 375K corpora", "qualitative", "4.1",
             "threshold"),
    Reported("id_robustness", "larger_corpora_less_brittle",
             "larger ID corpora reduce brittleness (share of correctly traced snippets an edit "
             "breaks, last epoch)", "qualitative", "1, 4.1", "threshold"),
    Reported("id_robustness", "full_test_matches",
             "on the full test set, EM under each edit closely matches EM unaltered", "qualitative",
             "4.1, App. E, Fig. 12", "threshold"),
    # pair coverage (Sec. 4.2, 4.2.1)
    Reported("pair_coverage", "assignment_excluded_above_80_until",
             "assignment scope: excluded-pairs EM > 80% up to this exclusion %", 95, "4.2, Fig. 4a",
             "threshold"),
    Reported("pair_coverage", "allowed_stays_high",
             "allowed-pairs test stays high at every exclusion % (both scopes)", "qualitative",
             "4.2, 4.2.1, Fig. 4", "threshold"),
    Reported("pair_coverage", "assignment_decline_from",
             "assignment scope: excluded-pairs EM begins to decline at this exclusion % (4.2; "
             "4.2.1 says it stays above 80% even at 98%)", 98, "4.2, 4.2.1, Fig. 4a", "threshold"),
    Reported("pair_coverage", "assignment_collapse_at",
             "assignment scope: excluded-pairs EM collapses at this exclusion %", 100, "4.2, Fig. 4a",
             "threshold"),
    Reported("pair_coverage", "global_below_80_from",
             "global scope: excluded-pairs EM < 80% from this exclusion %", 60, "4.2.1, Fig. 4b",
             "threshold"),
    # depth curriculum (Sec. 4.3.1, App. F)
    Reported("depth_curriculum", "depth6_p0", "depth-6 EM with p = 0", 0.949, "4.3.1, Fig. 13"),
    Reported("depth_curriculum", "depth67_p1", "depth-6 and depth-7 EM once p >= 1 (at least)", 0.99,
             "4.3.1, Fig. 13", "threshold"),
    Reported("depth_curriculum", "depth8_best", "depth-8 EM, best over p >= 1", 0.994, "4.3.1, Fig. 13"),
    Reported("depth_curriculum", "depth9", "depth-9 EM much lower for every p", "qualitative",
             "4.3.1, Fig. 13", "threshold"),
    # SFT with LoRA (Sec. 4.4, App. G.1, Table 3); its pre-trained model is the base model, the
    # row Sec. 4.3 quotes from the same table. (Table 4's APE row has the same numbers, but at
    # the scaled-down scales it is another run, read as an order of three encodings: kept apart.)
    Reported("sft_lora", "pretrained_id", "pre-trained, ID", 1.0, "G.1, Table 3",
             same_as=("base", "id")),
    Reported("sft_lora", "pretrained_deeper", "pre-trained, deeper", 0.0, "G.1, Table 3",
             same_as=("base", "deeper")),
    Reported("sft_lora", "pretrained_longer", "pre-trained, longer", 0.4365, "G.1, Table 3",
             same_as=("base", "longer")),
    Reported("sft_lora", "finetuned_id", "fine-tuned (LoRA r=8), ID", 0.9922, "G.1, Table 3"),
    Reported("sft_lora", "finetuned_deeper", "fine-tuned (LoRA r=8), deeper", 0.0, "G.1, Table 3"),
    Reported("sft_lora", "finetuned_longer", "fine-tuned (LoRA r=8), longer", 0.4668, "G.1, Table 3"),
    Reported("sft_lora", "trainable_params", "LoRA trainable parameters", 2_200_000, "G.1", "count"),
    # positional encodings (Sec. 4.4, App. G.2, Table 4)
    Reported("pe_ablation", "ape_id", "APE, ID", 1.0, "G.2, Table 4"),
    Reported("pe_ablation", "ape_longer", "APE, longer", 0.4365, "G.2, Table 4"),
    Reported("pe_ablation", "ape_deeper", "APE, deeper", 0.0, "G.2, Table 4"),
    Reported("pe_ablation", "rpe_id", "RPE (Shaw), ID", 0.8262, "G.2, Table 4"),
    Reported("pe_ablation", "rpe_longer", "RPE (Shaw), longer", 0.1299, "G.2, Table 4"),
    Reported("pe_ablation", "rpe_deeper", "RPE (Shaw), deeper", 0.0, "G.2, Table 4"),
    Reported("pe_ablation", "rpb_id", "RPB (T5), ID", 1.0, "G.2, Table 4"),
    Reported("pe_ablation", "rpb_longer", "RPB (T5), longer", 0.2480, "G.2, Table 4"),
    Reported("pe_ablation", "rpb_deeper", "RPB (T5), deeper", 0.0, "G.2, Table 4"),
]

_BY_KEY = {(r.experiment, r.key): r for r in REPORTED}


def reported(experiment: str, key: str) -> Reported:
    try:
        return _BY_KEY[(experiment, key)]
    except KeyError:
        raise KeyError(f"the paper reports no {key!r} for {experiment!r}") from None


def table(experiment: str | None = None):
    """The reported numbers as a pandas DataFrame (optionally of one experiment)."""
    rows = [asdict(r) for r in REPORTED if experiment in (None, r.experiment)]
    return pd.DataFrame(rows)


def compare(experiment: str, ours: dict[str, float], scale: str, hardware: str = "",
            verdicts: dict[str, dict] | None = None):
    """A "paper vs this run" table: one row per reported key of the experiment (setup numbers
    excluded), with its key and kind, our value (``ours[key]``, NaN when not measured), the
    scale and hardware that produced it and, from ``verdicts`` (key -> verdict and evidence,
    :func:`tinytrace.report.verdicts.verdicts`), whether the finding is reproduced."""
    verdicts = verdicts or {}
    rows = []
    for r in REPORTED:
        if r.experiment != experiment or r.kind == "setup":
            continue
        rows.append({
            "key": r.key,
            "what": r.what,
            "section": r.section,
            "paper": r.value,
            "this run": ours.get(r.key, float("nan")),
            "scale": scale,
            "hardware": hardware,
            "kind": r.kind,
            "verdict": verdicts.get(r.key, {}).get("verdict", "not measured"),
            "evidence": verdicts.get(r.key, {}).get("evidence", ""),
        })
    return pd.DataFrame(rows)
