"""A run evaluated after its data folder changed: one line naming its config.json, exit 3."""

from __future__ import annotations

from lowbit.cli import main

from .files import write_image_folder


def test_eval_of_a_run_whose_folder_changed_is_one_line_exit_3(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    args = ["--quiet", "train", "--recipe", "w2a2", "--width", "8", "--image-size", "16"]
    args += ["--epochs", "1", "--batch-size", "8", "--data", str(data), "--out", str(run)]
    assert main(args) == 0
    assert main(["--quiet", "eval", str(run)]) == 0
    capsys.readouterr()
    (data / "crack" / "003.png").replace(data / "crack" / "099.png")  # same files, other split
    write_image_folder(tmp_path / "more", per_class=9)
    (tmp_path / "more" / "hole" / "008.png").replace(data / "hole" / "008.png")  # one more
    assert main(["--quiet", "eval", str(run)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run / 'config.json'}: data " in err[0] and "retrain" in err[0]
