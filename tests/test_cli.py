import io
import json
import subprocess
import sys

import pytest

from tinytrace.cli import main

CODE = "a = 5\nif a < 3:\n\tb = a + 1\nc = a - 2\n"


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "tinytrace", *args], input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_trace_from_stdin_and_file(tmp_path):
    r = run_cli("trace", stdin=CODE)
    assert r.returncode == 0 and r.stdout.endswith("@^$a?5;c?3\n")
    f = tmp_path / "s.py"
    f.write_text(CODE)
    assert run_cli("trace", str(f)).stdout == r.stdout


@pytest.mark.parametrize(
    "template",
    ["import os; os.mkdir('{m}')", "open('{m}', 'w')", "a = open('{m}', 'w')",
     "x = __import__('os').mkdir('{m}')", "a.b = open('{m}', 'w')"],
)
def test_trace_rejects_code_outside_the_language_before_running(template, tmp_path):
    marker = tmp_path / "ran"
    r = run_cli("trace", stdin="x = 1\n" + template.format(m=marker) + "\n")
    assert r.returncode == 2 and "unsupported" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()  # nothing ran


@pytest.mark.parametrize("code", ["a = 5if a < 3 else 2\n", "a = 1or 2\n", "a = 0x1for\n"])
def test_trace_bad_input_prints_only_the_projects_error(code):
    """Python's parser warns (SyntaxWarning: invalid decimal literal) on these before any
    error of ours; parse silences it, so stderr holds the one-line error alone."""
    r = run_cli("trace", stdin=code)
    assert r.returncode == 2 and "Warning" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("tinytrace trace: ")


def test_trace_runtime_rejection():
    r = run_cli("trace", "--value-range", "-9", "9", stdin="a = 5\nb = a + 7\n")
    assert r.returncode == 1 and "value_range" in r.stderr


@pytest.mark.parametrize("code, cause", [
    ("a = b + 1\n", "NameError: name 'b' is not defined"),
    ("a = 5 // 0\n", "ZeroDivisionError: "),  # then Python's own words, which change
])
def test_trace_runtime_rejection_names_the_exception(code, cause, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(code))
    assert main(["trace"]) == 1
    said = capsys.readouterr().err
    assert said.startswith(f"tinytrace trace: rejected by the runtime filter: exception ({cause}")
    assert said.endswith(")\n") and said.count("\n") == 1


@pytest.mark.parametrize(
    "args, match",
    [
        (["data", "build", "--preset", "nope", "--num-snippets", "5", "--out", "x"], "invalid choice"),
        (["data", "build", "--preset", "base", "--num-snippets", "-5", "--out", "x"], ">= 0"),
        (["data", "build", "--preset", "base", "--num-snippets", "5", "--out", "x"], "exceed"),
        (["data", "build", "--preset", "base", "--num-snippets", "50", "--test-size", "1",
          "--validation-size", "1", "--set", "max_statements=2", "--out", "x"], "statement range"),
        (["data", "build", "--preset", "base", "--num-snippets", "50", "--test-size", "1",
          "--validation-size", "1", "--set", "bogus=2", "--out", "x"], "bogus"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_one_line_exit_2(args, match, tmp_path, capsys):
    args = [str(tmp_path / a) if a == "x" else a for a in args]
    with pytest.raises(SystemExit) as e:
        code = main(args)
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_data_build_cli(tmp_path):
    r = run_cli("data", "build", "--preset", "base", "--num-snippets", "300", "--test-size", "100",
                "--validation-size", "50", "--seed", "1", "--workers", "1", "--quiet",
                "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "train 150" in r.stdout and (tmp_path / "base" / "test-00000-of-00001.parquet").exists()


def test_bench_generate_json():
    r = run_cli("bench", "generate", "--seconds", "0.2", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for k in ("generate_only", "settrace", "fast", "pipeline", "fast_over_settrace"):
        assert result[k] > 0


def test_trace_does_not_import_torch(tmp_path):
    """``tinytrace trace`` runs for real and leaves torch, numpy and pandas unloaded."""
    f = tmp_path / "s.py"
    f.write_text(CODE)
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from tinytrace.cli import main; rc = main(['trace', sys.argv[1]]);"
                        " print(rc, sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))",
                        str(f)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    trace, last = r.stdout.rsplit("\n", 2)[0], r.stdout.splitlines()[-1]
    assert trace.endswith("@^$a?5;c?3") and last == "0 []"


def test_experiment_table_tells_every_row_apart():
    """id_robustness rows differ only in corpus, epoch and subset: the printed table shows
    those columns (and no constant one), so no two printed rows name the same thing."""
    import pandas as pd

    from tinytrace.cli.experiment import shown_columns

    rows = [dict(experiment="id_robustness", model="base", test_set="id", condition=edit,
                 corpus=corpus, epoch=epoch, subset=subset, seed=0, exact_match=0.5, n=8,
                 step_em_tf=0.9, final_state_match=0.7, edit=edit)
            for corpus in ("250K", "125K") for epoch in (1, 2) for edit in ("none", "renaming")
            for subset in (("full",) if edit == "none" else ("full", "correct"))]
    df = pd.DataFrame(rows)
    cols = shown_columns(df)
    assert cols == ["model", "test_set", "condition", "corpus", "epoch", "subset", "exact_match",
                    "n", "step_em_tf", "final_state_match"]
    assert not df[[c for c in cols if c in ("model", "test_set", "condition", "corpus", "epoch",
                                            "subset")]].duplicated().any()
    assert shown_columns(df.drop(columns=["corpus", "epoch", "subset"])) == [  # seed: constant
        "model", "test_set", "condition", "exact_match", "n", "step_em_tf", "final_state_match"]


def test_ctrl_c_while_starting_is_one_line(monkeypatch, capsys):
    """Ctrl-C while the command's module is imported (torch: a second or two) ends like one
    during the command: one line, exit 130, no traceback."""
    import tinytrace.cli as cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["train", "--help"]) == 130
    assert capsys.readouterr().err == "tinytrace: stopped by SIGINT while starting; nothing was done\n"
