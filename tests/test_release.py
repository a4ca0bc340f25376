"""The shipped test sets in ``data/tinytracing``: they load
offline with ``datasets``, the card lists exactly what is on disk, each set has the property its
section tests, they are the sets the experiments evaluate at the gpu/paper scales, and the release
list rebuilds them deterministically. Nothing here rebuilds the whole release."""
import fnmatch
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tinytrace import data as td
from tinytrace.cli import main
from tinytrace.data import (
    BuildConfig,
    build,
    build_release,
    coverage_configs,
    release_sets,
    write_card,
)
from tinytrace.lang.config import get_preset, sample_pairs
from tinytrace.lang.program import cooccurring_pairs, parse

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "tinytracing"
SETS = {s.name: s for s in release_sets()}


def _table(folder: Path, config: str, split: str = "test") -> pa.Table:
    files = sorted((folder / config).glob(f"{split}-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def _card_yaml(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _on_disk(folder: Path) -> set[str]:
    return {p.parent.name for p in folder.glob("*/build.json")}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "timing.json"}


# --- what is shipped ----------------------------------------------------------------------------
def test_shipped_configs_are_the_release_list():
    assert _on_disk(DATA) == set(SETS)
    for name, rs in SETS.items():
        b = json.loads((DATA / name / "build.json").read_text())
        assert b["build"] == rs.build_config().to_dict(), name
        assert rs.size == 1024 and b["splits"] == {"train": 0, "validation": 0, "test": 1024}
        assert b["release"]["used_by"] == rs.used_by


def test_every_shipped_config_loads_offline():
    from datasets import get_dataset_config_names, load_dataset

    assert set(get_dataset_config_names(str(DATA))) == set(SETS)
    for name in SETS:
        ds = load_dataset(str(DATA), name, split="test")
        assert len(ds) == 1024, name
        assert {"code", "trace", "n_tokens", "executed_operand_pairs"} <= set(ds.column_names)


def test_card_lists_exactly_the_configs_on_disk():
    card = _card_yaml(DATA)
    names = [c["config_name"] for c in card["configs"]]
    assert names == list(SETS)  # the release order, base first (the default)
    assert card["configs"][0].get("default") is True
    for c in card["configs"]:
        assert [f["split"] for f in c["data_files"]] == ["test"]
        assert list(DATA.glob(c["data_files"][0]["path"])), c
    text = (DATA / "README.md").read_text()
    for name in SETS:
        assert f"| `{name}` | 1024 |" in text and f"### `{name}`" in text
        assert f"tinytrace data release --only {name}" in text
    assert "tinytrace data release --out" in text and "load_dataset(" in text


def test_card_states_the_scaled_tasks_value_ranges():
    from tinytrace.experiments import get_scale

    text = " ".join((DATA / "README.md").read_text().split())
    for name in ("smoke", "cpu"):
        lo, hi = get_scale(name).generator("id").value_range
        assert f"[{lo}, {hi}] at `{name}`" in text, name


def test_card_is_what_write_card_writes(tmp_path):
    before = (DATA / "README.md").read_text()
    for name in SETS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "build.json").write_bytes((DATA / name / "build.json").read_bytes())
    assert write_card(tmp_path).read_text() == before


def test_shipped_sets_have_their_property():
    for name, rs in SETS.items():
        t = _table(DATA, name).to_pylist()
        g = rs.generator
        assert len({r["sha256"] for r in t}) == len(t) == 1024
        assert all(r["max_step_pair_tokens"] <= 512 for r in t), name  # determinism filter
        assert all(g.min_statements <= r["n_statements"] <= g.max_statements for r in t), name
        depths = {r["max_depth"] for r in t}
        assert min(depths) >= g.min_depth and max(depths) <= g.max_depth, name
        if g.min_depth:  # the depth sets: recount from the code itself
            assert all(r["max_depth"] == max(ln.indent for ln in parse(r["code"])) for r in t), name
    for n in (6, 7, 8, 9):
        assert {r["max_depth"] for r in _table(DATA, f"depth-{n}").to_pylist()} == {n}
    longer = _table(DATA, "longer").column("n_statements").to_pylist()
    assert min(longer) >= 11 and max(longer) <= 17
    assert set(_table(DATA, "deeper").column("max_depth").to_pylist()) == {3, 4}
    assert max(_table(DATA, "depth-0-5").column("max_depth").to_pylist()) == 5


def test_excluded_and_allowed_pairs():
    for name, rs in SETS.items():
        if not rs.generator.forbidden_pairs:
            continue
        forbidden = set(rs.generator.forbidden_pairs)
        rows = _table(DATA, name).to_pylist()
        if name.startswith("excluded-"):
            assert all(forbidden & set(r["executed_operand_pairs"]) for r in rows), name
        else:
            assert not any(forbidden & set(r["operand_pairs"]) for r in rows), name
            if rs.generator.exclusion_scope == "global":  # not even inside one statement
                assert not any(forbidden & set(cooccurring_pairs(parse(r["code"]))) for r in rows)


# --- they are the sets the sections evaluate ---------------------------------------------------
@pytest.mark.parametrize("scale", ["gpu", "paper"])
def test_release_is_what_the_experiments_evaluate(scale, tmp_path, monkeypatch):
    """Ask the experiments' own code which corpora it builds (``build`` captured, nothing
    generated); the shipped set must be its test split: same generator, seed, test size, window
    and chunking (the test split does not depend on the corpus size, see the next test)."""
    from tinytrace.experiments import get_scale
    from tinytrace.experiments.cache import _Context

    built = []
    monkeypatch.setattr(td, "build", lambda cfg, out, **kw: built.append(cfg))
    s = get_scale(scale)
    ctx = _Context(s, tmp_path, seed=0, progress=False)
    # exp_base / exp_sft_lora / exp_pe_ablation / exp_id_robustness, exp_depth_curriculum
    want = {"base": ctx.base_corpus, "depth-0-5": lambda: ctx.base_corpus(gen=s.generator("curriculum"))}
    for role in ("longer", "deeper", "depth-6", "depth-7", "depth-8", "depth-9"):
        want[role] = lambda role=role: ctx.test_set(role)
    # exp_pair_coverage: the corpora of coverage_configs, built as it builds them
    for cov in coverage_configs(s.generator("id"), s.exclusion_pcts, s.scopes, seed=ctx.seed):
        want[f"allowed-{cov.scope}-{cov.pct}"] = \
            lambda g=cov.allowed: ctx.base_corpus(s.coverage_corpus, gen=g)
        if cov.excluded is not None:
            want[f"excluded-{cov.pct}"] = \
                lambda g=cov.excluded: ctx.cache.test_set(g, s.test_size, ctx.seed, s.context)
    checked = 0
    for name, make in want.items():
        if name not in SETS:
            assert scale == "paper" and int(name.rsplit("-", 1)[1]) not in td.RELEASE_PCTS
            continue
        built.clear()
        make()
        (cfg,) = built
        mine = SETS[name].build_config()
        assert cfg.generator.to_dict() == mine.generator.to_dict(), name
        assert (cfg.seed, cfg.test_size, cfg.context, cfg.chunk_size) == \
               (mine.seed, mine.test_size, mine.context, mine.chunk_size), name
        checked += 1
    assert checked == len(SETS)  # every shipped set is evaluated by some section


def test_coverage_configs():
    base = get_preset("base")
    covs = coverage_configs(base, (0, 10), ("assignment", "global"), seed=3)
    assert [(c.scope, c.pct) for c in covs] == [("assignment", 0), ("assignment", 10),
                                                ("global", 0), ("global", 10)]
    zero, ten, global_ten = covs[0], covs[1], covs[3]
    assert zero.pairs == () and zero.excluded is None and zero.allowed.forbidden_pairs == ()
    assert ten.pairs == sample_pairs(10, seed=3) and len(ten.pairs) == 35
    assert ten.allowed == base.replace(name="assignment-10", forbidden_pairs=ten.pairs)
    assert global_ten.allowed.exclusion_scope == "global" and global_ten.pairs == ten.pairs
    assert ten.excluded == global_ten.excluded == base.replace(
        name="excluded-10", forbidden_pairs=ten.pairs, require_forbidden_pair=True)


def test_test_split_does_not_depend_on_corpus_size(tmp_path):
    gen = get_preset("deeper")
    kw = dict(seed=5, test_size=40, chunk_size=32, tokens=False)
    build(BuildConfig(gen, num_snippets=40, validation_size=0, config_name="alone", **kw),
          tmp_path, workers=1, progress=False)
    build(BuildConfig(gen, num_snippets=200, validation_size=20, config_name="corpus", **kw),
          tmp_path, workers=1, progress=False)
    assert _table(tmp_path, "alone").equals(_table(tmp_path, "corpus"))


# --- building it -------------------------------------------------------------------------------
def test_release_list_builds_deterministically(tmp_path):
    tiny = release_sets(size=8)
    lines = []
    build_release(tmp_path / "a", tiny, chunk_size=8, log=lambda *a, **k: lines.append("".join(a)))
    build_release(tmp_path / "b", tiny, chunk_size=8, log=None)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and "README.md" in a
    assert len([x for x in a if x.endswith(".parquet")]) == len(tiny)
    # a progress line per config: its name, then (same line) what was built
    assert [x.split("]")[1].strip() for x in lines if x.startswith("[")] == list(SETS)
    assert len([x for x in lines if x.startswith("8 snippets, mean")]) == len(tiny)
    assert lines[-1].startswith(f"release: {len(tiny)} configs")
    assert [c["config_name"] for c in _card_yaml(tmp_path / "a")["configs"]] == list(SETS)
    from datasets import load_dataset

    assert len(load_dataset(str(tmp_path / "a"), "excluded-10", split="test")) == 8


def test_release_rebuilds_shipped_configs_byte_for_byte(tmp_path, capsys):
    """Two cheap configs through the CLI: the same bytes as the committed ones."""
    assert main(["data", "release", "--out", str(tmp_path), "--only", "base,allowed-global-100"]) == 0
    out = capsys.readouterr().out
    assert "[ 1/2] base" in out and "release: 2 configs" in out
    for name in ("base", "allowed-global-100"):
        assert _files(tmp_path / name) == _files(DATA / name), name
    with pytest.raises(ValueError, match="unknown release config"):
        build_release(tmp_path, only=["depth-10"], log=None)


def test_release_list_cli(capsys):
    assert main(["data", "release", "--list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[0] for r in rows] == list(SETS)


def test_push_uploads_every_config(monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            calls["repo"] = (repo_id, kw)

        def upload_folder(self, folder_path, ignore_patterns, **kw):
            calls["upload"] = (folder_path, ignore_patterns)
            return "https://huggingface.co/datasets/someone/tinytracing/commit/0"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert td.push(DATA, "someone/tinytracing").endswith("/commit/0")
    folder, ignore = calls["upload"]
    assert calls["repo"][1]["repo_type"] == "dataset"
    sent = [p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()]
    sent = [p for p in sent if not any(fnmatch.fnmatch(p, pat) for pat in ignore)]
    assert "README.md" in sent
    for name in SETS:
        assert f"{name}/test-00000-of-00001.parquet" in sent and f"{name}/build.json" in sent


def test_datasets_page_shows_every_config():
    from tinytrace.report.pages import datasets_page

    page = datasets_page(DATA)
    for name, rs in SETS.items():
        assert f"| `{name}` | test | 1,024 |" in page and rs.used_by in page
    assert "## First example of `base` (test)" in page and "### `depth-9` (test)" in page
