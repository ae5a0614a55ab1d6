"""The recflow command line, called in-process through its main()."""

from __future__ import annotations

from recflow.cli import main
from recflow.data.dataset import Dataset


def test_world_generate_writes_a_dataset_with_ground_truth(tmp_path, capsys):
    assert main(["world", "generate", "--scale", "tiny", "--seed", "3", "--out", str(tmp_path / "w")]) == 0
    dataset = Dataset(tmp_path / "w")
    assert dataset.manifest["seed"] == 3
    assert dataset.ground_truth_dir is not None
    assert "events" in capsys.readouterr().out


def test_unknown_scale_is_a_clear_error(tmp_path, capsys):
    assert main(["world", "generate", "--scale", "huge", "--out", str(tmp_path / "w")]) == 2
    error = capsys.readouterr().err
    assert "huge" in error and "tiny" in error
    assert not (tmp_path / "w").exists()


def test_import_movielens_and_validate(tmp_path, capsys):
    source = tmp_path / "ml"
    source.mkdir()
    (source / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,964982703\n2,10,3.5,964982931\n")
    assert main(["data", "import-movielens", str(source), "--out", str(tmp_path / "ds")]) == 0
    assert Dataset(tmp_path / "ds").manifest["num_events"] == 2
    assert main(["data", "validate", str(source)]) == 0
    assert "passed" in capsys.readouterr().out.lower()


def test_validate_names_the_problem_and_exits_non_zero(tmp_path, capsys):
    source = tmp_path / "ml"
    source.mkdir()
    (source / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,-5\n2,10,x,964982931\n")
    assert main(["data", "validate", str(source)]) == 1
    captured = capsys.readouterr()
    assert "event_timestamp" in captured.err and "rating" in captured.err
    assert main(["data", "import-movielens", str(source), "--out", str(tmp_path / "ds")]) == 1
    assert not (tmp_path / "ds").exists()


def test_compiled_pipeline_check_passes_on_a_fresh_checkout(capsys):
    assert main(["pipeline", "compile", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_pipeline_run_rejects_an_unknown_parameter_before_running(tmp_path, capsys):
    code = main(["pipeline", "run", "--workspace", str(tmp_path / "ws"), "--param", "epoch=3"])
    assert code == 2
    assert "epoch" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_pipeline_run_rejects_an_ill_typed_parameter(tmp_path, capsys):
    assert main(["pipeline", "run", "--workspace", str(tmp_path / "ws"), "--param", "epochs=many"]) == 2
    assert "epochs" in capsys.readouterr().err
