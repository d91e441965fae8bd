"""What every subcommand shares: a usage error is one line naming the subcommand's --help, and
`resume` says what a folder it cannot resume is, or lacks. In-process: argparse answers before
anything is loaded or trained."""

from __future__ import annotations

import pytest

from backprop_lab import bench, compare, gradcheck, predict, resume, runs
from backprop_lab.report import describe_config, plural
from backprop_lab.rundir import CHECKPOINT, METRICS

MAINS = {"resume": resume.main, "show": compare.show_main, "compare": compare.compare_main,
         "predict": predict.predict_main, "gradcheck": gradcheck.main, "bench": bench.main}


@pytest.mark.parametrize("sub,args,message", [
    ("resume", [], "the following arguments are required: RUN_DIR"),  # not the optional KEY=VALUE too
    ("show", [], "the following arguments are required: RUN_DIR"),
    ("compare", ["--top", "x"], "argument --top: expected a positive integer, got 'x'"),
    ("predict", [], "the following arguments are required: RUN_DIR"),  # not the optional IMAGE too
    ("predict", ["somewhere"], "give IMAGE files or --from-test N"),
    ("gradcheck", ["--batch", "x"], "argument --batch: invalid int value: 'x'"),
    ("gradcheck", ["--batch", "1"], "--batch must be >= 2 (batch norm needs two rows) and --entries >= 1"),
    ("bench", ["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_a_usage_error_is_one_line_naming_the_subcommands_help(capsys, sub, args, message):
    with pytest.raises(SystemExit) as exit:
        MAINS[sub](args)
    assert exit.value.code == 2
    assert capsys.readouterr() == ("", f"error: {message}; see backprop-lab {sub} --help\n")


def test_resume_of_what_is_not_there_or_not_a_run_says_which(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    (tmp_path / "empty").mkdir()
    cases = {
        "nowhere": "nowhere does not exist",
        "afile": "afile is not a directory",
        "empty": "empty is not a backprop-lab run directory (no summary.json)",
    }
    for path, expected in cases.items():
        assert resume.main([path]) == 2
        assert capsys.readouterr() == ("", f"error: {expected}\n")
    assert list((tmp_path / "empty").iterdir()) == []  # not even a lock file left behind


def test_resume_of_a_run_killed_before_its_summary_says_what_is_there(tmp_path, capsys):
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / METRICS).write_text("epoch,train_loss\n")
    (killed / CHECKPOINT).write_bytes(b"")
    assert resume.main([str(killed)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"error: {killed} has metrics.csv and checkpoint.pt but no summary.json (the run "
                                 f"stopped before writing one; compare lists it as incomplete): it cannot be "
                                 f"resumed; start a new run\n")
    assert sorted(p.name for p in killed.iterdir()) == [CHECKPOINT, METRICS]
    assert runs.load_run(killed, "killed").status == "incomplete"  # as the message says


def test_counts_of_one_are_singular():
    assert [plural(n, "run") for n in (0, 1, 2, 1000)] == ["0 runs", "1 run", "2 runs", "1,000 runs"]
    assert describe_config({"train": {"steps": 1}}).endswith(", 1 step")
    assert describe_config({"train": {"epochs": 1}}).endswith(", 1 epoch")


def test_gradchecks_verdict_fits_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert gradcheck.main(["model.hidden_size=16"]) == 0
    out = capsys.readouterr().out
    assert "all 4 parameters pass" in out and "autograd: relative error <= 1e-09" in out
    assert max(map(len, out.splitlines())) <= 80, out  # the verdict was one line of 124
