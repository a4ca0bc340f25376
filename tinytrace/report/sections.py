"""The book's section notebooks, one per paper section, in the paper's order."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository (notebooks/, book/)
DEFAULT_OUT = Path("book") / "sections"  # where executed notebooks and their results go


@dataclass(frozen=True)
class Section:
    title: str
    paper: str  # the paper sections it reproduces
    experiments: tuple = ()  # tinytrace.experiments names it runs
    after: tuple = ()  # notebooks that must finish first when both run (shared cached artifacts)


# The base run (02) builds the base corpus, the OOD test sets and the base model that 03, 04
# (its reference, at most scales), 05 and 06 reuse from the cache; a second process asking for an artifact
# another is building waits for it.
NOTEBOOKS: dict[str, Section] = {
    "01_task_and_generator": Section("The task and the generator", "Sec. 2, App. B"),
    "02_model_data_training": Section("Model, data and training", "Sec. 3", ("base",)),
    "03_id_robustness": Section("Robustness to in-distribution edits", "Sec. 4.1, App. E",
                                ("id_robustness",), ("02_model_data_training",)),
    "04_coverage": Section("Generalization under controlled data coverage", "Sec. 4.2, 4.2.1",
                           ("pair_coverage",), ("02_model_data_training",)),
    "05_ood": Section("Out-of-distribution generalization", "Sec. 4.3, 4.3.1, App. F",
                      ("base", "depth_curriculum"), ("02_model_data_training",)),
    "06_ablations": Section("Ablations: SFT with LoRA and positional encodings",
                            "Sec. 4.4, App. G", ("sft_lora", "pe_ablation"),
                            ("02_model_data_training",)),
}
