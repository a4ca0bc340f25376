"""The dataset card: ``<out>/README.md`` of a dataset folder, made from the ``build.json`` of
every config in it.

The YAML metadata is a :class:`huggingface_hub.DatasetCardData` (its ``configs:`` list makes
``datasets.load_dataset(out, config, split=...)`` work offline as from the Hub); the body is
the Jinja template :data:`TEMPLATE`, rendered by :meth:`huggingface_hub.DatasetCard.from_template`
(which needs ``jinja2``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from .io import SPLITS

TEMPLATE = """\
---
{{ card_data }}
---

# {{ pretty_name }}

Synthetic Python snippets and their step-by-step execution traces, from the
TinyTrace-Generator of *A Minimalist Approach for Exploring Transformer Robustness to
In-Distribution and Out-of-Distribution Samples* (the TinyTracing paper), rebuilt by the
`tinytrace` companion package.

## Loading

```python
from datasets import get_dataset_config_names, load_dataset
ds = load_dataset("<this folder or org/name>", "{{ first }}", split="test")
print(ds[0]["trace"])
print(get_dataset_config_names("<this folder or org/name>"))  # every config below
```

Configs: {% for b in builds %}`{{ b["config_name"] }}`{{ ", " if not loop.last }}{% else %}none yet{% endfor %}.

## Fields

| field | meaning |
|---|---|
| `code` | the snippet (one tab per nesting level) |
| `trace` | the whole example: the snippet, one `#STEP` block per executed line, the final `@^$` block |
| `n_statements` | lines (assignments and `if` headers) |
| `max_depth` | deepest nesting level (an `if` inside an `if` has depth 2) |
| `n_steps` | executed lines |
| `n_tokens` | tokens with the 77-token vocabulary, end-of-example token included |
| `max_step_pair_tokens` | longest two consecutive step blocks, in tokens (determinism filter) |
| `operand_pairs` / `executed_operand_pairs` | unordered variable pairs of `x = u op v` assignments (all / executed) |
| `sha256` | SHA-256 of `code`, the deduplication key |

## Configs

| config | {{ splits | join(" | ") }} | mean tokens | seed | generator | used by |
|---|{{ "---|" * (splits | length + 4) }}
{% for b in builds -%}
{% set g = b["build"]["generator"] -%}
| `{{ b["config_name"] }}` |{% for x in splits %} {{ b["splits"].get(x, 0) }} |{% endfor %} {{ mean_tokens(b) }} | {{ b["build"]["seed"] }} | `{{ g["name"] }}`: {{ generator_short(g) }} | {{ b.get("release", {}).get("used_by", "") }} |
{% endfor -%}
{% if released -%}
{% set r = released[0] %}
## How the test sets were made

Each config with a *used by* entry is the test set that the companion's experiments
(`tinytrace.experiments`) evaluate at the `gpu` and `paper` scales with experiment
seed {{ released_seeds[0] }}: the same generator config, {{ r["splits"]["test"] }} snippets, a determinism-filter window of {{ r["build"]["context"] }} tokens and
chunks of {{ r["build"]["chunk_size"] }} snippets. The list of them is `tinytrace.data.release_sets()`; rebuild them all, byte
for byte, with `tinytrace data release --out <folder>` (one with `--only NAME`) and
push them with `tinytrace data push <folder> --repo-id ORG/tinytracing`. The `smoke`
and `cpu` scales evaluate a scaled-down task instead (smaller sets, fewer variables
and statements, values in [-9, 9] at `smoke` and [-5, 5] at `cpu`); they build those sets
in their cache.

- *Test split of a training corpus* (seed = experiment seed): `tinytrace data build`
  fills the test split first, from the start of the seeded stream, then validation and
  train, so the test split of the training corpus is these snippets whatever the
  corpus size, and no training snippet is one of them (one hash set over all splits).
- *Stand-alone test set* (seed = experiment seed + 1000): built like a test-only corpus.
  It differs from the training distributions by construction (more statements, deeper
  nesting, or an executed assignment on a pair that the training corpus never has as
  operands). The depth-6 and depth-7 sets are not hash-checked against the
  curriculum's injected depth-6/7 training snippets (same generator, experiment seed),
  which the runs with p > 0 train on.
{% endif %}
## Creation

{% for b in builds -%}
{% set g, st, rel = b["build"]["generator"], b["stats"], b.get("release") -%}
### `{{ b["config_name"] }}`

{% if rel is not none -%}
- used by: {{ rel["used_by"] }}; {{ "the test split of " ~ rel["split_of"] if rel["split_of"] else "a stand-alone test set" }}
{% if rel["made"] -%}
- made: {{ rel["made"] }}
{% endif -%}
- command: `{{ rel["command"] }}`
{% endif -%}
- generator `{{ g["name"] }}`: {{ g["min_statements"] }}-{{ g["max_statements"] }} statements, depth {{ g["min_depth"] }}-{{ g["max_depth"] }}, variables `{{ g["variables"][0] }}-{{ g["variables"][-1] }}` ({{ g["variables"] | length }}), ops `{{ g["arith_ops"] | join(" ") }}`, comparisons `{{ g["comparisons"] | join(" ") }}`, literals up to {{ g["max_literal"] }} in absolute value{% if g["move_weights"].get("while") %} (a `while` bound up to {{ g["max_literal"] + g["while_span"] }}){% endif %}, values in {{ g["value_range"] }}
{% if g["require_forbidden_pair"] -%}
- forbidden pairs: {{ g["forbidden_pairs"] | length }}, every example executes an assignment on one (the generator draws freely, the pipeline keeps those snippets)
{% else -%}
- forbidden pairs: {{ g["forbidden_pairs"] | length }} ({{ g["exclusion_scope"] }} scope)
{% endif -%}
- seed {{ b["build"]["seed"] }}, determinism-filter window {{ b["build"]["context"] }} tokens, built by tinytrace {{ b["tinytrace_version"] }}
- attempts {{ st["attempts"] }}; rejected: generator {{ st["generator"] }}, value range {{ st["value_range"] }}, loop cap {{ st["loop_cap"] }}, exception {{ st["exception"] }}, no forbidden pair {{ st["no_forbidden_pair"] }}; duplicates {{ st["duplicate"] }}; non-deterministic {{ st["nondeterministic"] }}
- full config: `{{ b["config_name"] }}/build.json`

{% endfor -%}
## Deduplication and leakage

Within each config, one global SHA-256 hash set over the raw snippets is applied before
splitting (paper App. C.4): no snippet appears twice in any split or across splits.
Test and validation examples pass the determinism filter: every two consecutive trace
steps fit in the model's context window (Sec. 2.2, C.5).

## Citation

Cite the TinyTracing paper and this companion (see `CITATION.cff` in the repository).

"""


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def card_order(b: dict) -> tuple:
    """Sort key of a ``build.json``: the shipped sets in release order, then ``base``, then the
    other configs by name (numbers compared as numbers)."""
    rel = b.get("release")
    if rel is not None:
        return (0, rel["order"], [])
    return (1, b["config_name"] != "base", _natural(b["config_name"]))


def _generator_short(g: dict) -> str:
    depth = (f"{g['min_depth']}" if g["min_depth"] == g["max_depth"]
             else f"{g['min_depth']}-{g['max_depth']}")
    s = f"{g['min_statements']}-{g['max_statements']} statements, depth {depth}"
    k = len(g["forbidden_pairs"])
    if k and g["require_forbidden_pair"]:
        s += f", executes 1 of {k} excluded pairs"
    elif k:
        s += f", {k} pairs excluded ({g['exclusion_scope']})"
    return s


def _mean_tokens(b: dict):
    return next(iter(b.get("tokens", {}).values()), {}).get("mean_tokens", "")


def card_data(builds: list[dict], pretty_name: str = "TinyTracing") -> DatasetCardData:
    """The card's YAML metadata for these builds (in card order): one ``configs:`` entry per
    config, the first the default, each with the splits it has."""
    configs = []
    for i, b in enumerate(builds):
        name = b["config_name"]
        entry = {"config_name": name}
        if i == 0:
            entry["default"] = True
        entry["data_files"] = [{"split": s, "path": f"{name}/{s}-*"}
                               for s in SPLITS if b["splits"].get(s)]
        configs.append(entry)
    return DatasetCardData(pretty_name=pretty_name, license="mit", language=["code"],
                           task_categories=["text-generation"],
                           tags=["code-execution", "synthetic"], configs=configs)


def write_card(out: str | os.PathLike, pretty_name: str = "TinyTracing") -> Path:
    """(Re)write ``<out>/README.md`` from the ``build.json`` of every config present."""
    out = Path(out)
    builds = sorted((json.loads(f.read_text()) for f in out.glob("*/build.json")), key=card_order)
    released = [b for b in builds if "release" in b]
    card = DatasetCard.from_template(
        card_data(builds, pretty_name),
        template_str=TEMPLATE,
        pretty_name=pretty_name,
        builds=builds,
        first=builds[0]["config_name"] if builds else "base",
        # only the splits some config has: test-only releases get no empty train/validation columns
        splits=[x for x in SPLITS if any(b["splits"].get(x) for b in builds)] or ["test"],
        released=released,
        released_seeds=sorted({b["build"]["seed"] for b in released}),
        mean_tokens=_mean_tokens,
        generator_short=_generator_short,
    )
    path = out / "README.md"
    card.save(path)
    return path
