"""`predict --mask/--box/--whole-image`: the detector's region gives exactly the training crop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lowbit.artifacts import deployed_bits_of
from lowbit.cli import main
from lowbit.core.scores import DEFAULT_OOD_SCORE, DEFAULT_OOD_VIEWS, detector_name, ood_views
from lowbit.core.views import stack_views
from lowbit.data import crop_rule, read_mask, scan
from lowbit.data.preprocess import crop_rule_of
from lowbit.errors import ConfigError, DataError
from lowbit.fewshot import predict
from lowbit.fewshot.regions import boxes_from_args, masks_from_args, region_box
from lowbit.runtime import Runtime
from lowbit.train import load_run
from lowbit.train.run import splits_for

PICKED = (0, 7, 23)  # training images of three different types


@pytest.fixture(scope="module")
def training_images(crop_run, mvtec_folder):
    """[(image path, mask path, the training input x [3, S, S])] for PICKED training images."""
    _, record = load_run(crop_run)
    train = splits_for(record).train
    masks = {str(r.image_path): r.mask_path for r in scan(mvtec_folder)}
    return [(Path(train.paths[i]), masks[train.paths[i]], train.x[i]) for i in PICKED]


@pytest.fixture
def fed(monkeypatch):
    """The arrays `predict` gives the integer runtime, call by call."""
    inputs = []
    original = Runtime.run

    def spy(self, x, **kwargs):
        inputs.append(x.copy())
        return original(self, x, **kwargs)

    monkeypatch.setattr(Runtime, "run", spy)
    return inputs


def test_model_json_records_the_crop_rule(crop_run, w2a2_run) -> None:
    description = json.loads((crop_run / "model.json").read_text())
    assert description["input"]["crop"] == crop_rule()
    assert json.loads((w2a2_run / "model.json").read_text())["input"]["crop"] is None


def test_mask_and_box_feed_exactly_the_training_input(crop_run, training_images, fed) -> None:
    images = [image for image, _, _ in training_images]
    masks = [mask for _, mask, _ in training_images]
    boxes = [region_box(read_mask(mask)) for mask in masks]
    expected = np.stack([x for _, _, x in training_images])
    logits = Runtime(crop_run / "model.int.onnx").run(expected)["logits"]
    names = json.loads((crop_run / "model.json").read_text())["class_names"]
    for regions in ({"masks": masks}, {"boxes": boxes}):
        rows = predict(crop_run, images, **regions)
        # one runtime call on the crops' dihedral views stacked, the crops themselves first
        views = ood_views(json.loads((crop_run / "model.json").read_text())["ood"])
        assert np.array_equal(fed[-1], stack_views(expected, views))
        assert [row["class"] for row in rows] == [names[i] for i in logits.argmax(1)]
        assert [row["box"] for row in rows] == boxes
    assert [row["mask"] for row in predict(crop_run, images, masks=masks)] == list(map(str, masks))


def test_cli_mask_box_and_list_files_agree(crop_run, training_images, tmp_path, capsys) -> None:
    images = [str(image) for image, _, _ in training_images]
    masks = [str(mask) for _, mask, _ in training_images]
    boxes = [",".join(map(str, region_box(read_mask(Path(m))))) for m in masks]
    (tmp_path / "boxes.json").write_text(json.dumps([list(map(int, b.split(","))) for b in boxes]))
    (tmp_path / "masks.csv").write_text("mask\n" + "\n".join(masks) + "\n")
    runs = [
        ["--mask", *masks],
        ["--box", *boxes],
        ["--box", str(tmp_path / "boxes.json")],
        ["--mask", str(tmp_path / "masks.csv")],
    ]
    labels = []
    for extra in runs:
        assert main(["--json", "predict", str(crop_run), *images, *extra]) == 0
        rows = json.loads(capsys.readouterr().out)["predictions"]
        labels.append([(row["class"], row["score"], row["box"]) for row in rows])
    assert all(result == labels[0] for result in labels)
    assert main(["predict", str(crop_run), *images, "--mask", *masks]) == 0
    lines = capsys.readouterr().out.splitlines()
    deployed = detector_name(DEFAULT_OOD_SCORE, DEFAULT_OOD_VIEWS)
    header = ["image", "mask", "box", "label", "class", "score", f"({deployed})", "known"]
    assert lines[0].split() == header
    assert len(lines) == 1 + len(images) and lines[1].startswith(images[0])


def test_list_files_resolve_and_round(tmp_path) -> None:
    (tmp_path / "boxes.csv").write_text("x0,y0,x1,y1\n1,2,3,4\n0.5,1.5,9.2,10\n")
    assert boxes_from_args([str(tmp_path / "boxes.csv"), "5,6,7,8"]) == [
        (1, 2, 3, 4),
        (0, 1, 10, 10),  # rounded outward: the smallest pixel box holding the given one
        (5, 6, 7, 8),
    ]
    (tmp_path / "masks.json").write_text('["a_mask.png", "sub/b_mask.png"]')
    assert masks_from_args([str(tmp_path / "masks.json")]) == [
        tmp_path / "a_mask.png",
        tmp_path / "sub" / "b_mask.png",
    ]


def test_bad_regions_are_one_line_errors(crop_run, training_images, tmp_path, capsys) -> None:
    image, mask, _ = training_images[0]
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "empty.png")
    cases = [
        (["--mask", str(tmp_path / "small.png")], DataError, "is 12x10 but image"),
        (["--mask", str(tmp_path / "empty.png")], DataError, "empty mask"),
        (["--box", "40,40,50,45"], DataError, "not inside the 48x48 image"),
        (["--box", "5,5,5,9"], DataError, "not inside"),  # no pixel
        (["--box", "1,2,3"], ConfigError, "four numbers"),
        ([], ConfigError, "trained on crops around each defect's mask"),
        (["--mask", str(mask), str(mask)], ConfigError, "1 image(s) but 2 mask(s)"),
        (["--mask", str(mask), "--box", "1,1,4,4"], ConfigError, "not both"),
        (["--whole-image", "--box", "1,1,4,4"], ConfigError, "--whole-image"),
    ]
    for extra, error, needle in cases:
        assert main(["predict", str(crop_run), str(image), *extra]) == error.exit_code, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("lowbit: error:") and "\n" not in err and needle in err, err


def test_whole_images_need_the_flag_and_whole_image_models_refuse_masks(
    crop_run, w2a2_run, training_images, tmp_path
) -> None:
    image, mask, _ = training_images[0]
    row = predict(crop_run, [image], whole_image=True)[0]
    assert row["box"] is None and row["mask"] is None
    crop = tmp_path / "crop.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(crop)
    with pytest.raises(ConfigError, match="trained on whole images"):
        predict(w2a2_run, [crop], boxes=[(0, 0, 8, 8)])
    assert predict(w2a2_run, [crop])[0]["box"] is None


def test_format_1_model_json_reads_like_format_2() -> None:
    layers = [{"name": "head", "weight_bits": 96, "threshold_bits": 0}]
    old = {"input": {"normalization": {}}, "model_bits": {"total": 96, "layers": layers}}
    assert deployed_bits_of(old) == {"total": 96, "layers": layers}
    assert crop_rule_of(old) == crop_rule()  # format 1 exported only the default crops
    new = {"input": {"crop": None}, "deployed_bits": {"total": 96, "layers": layers}}
    assert deployed_bits_of(new)["total"] == 96 and crop_rule_of(new) is None


def test_docs_python_example_runs(crop_run, training_images, capsys) -> None:
    docs = Path(__file__).parents[2] / "docs" / "predict.md"
    example = docs.read_text().split("```python\n")[1].split("```")[0]
    image_path, mask_path, _ = training_images[0]
    exec(example, {"export_dir": crop_run, "image_path": image_path, "mask_path": mask_path})
    printed = capsys.readouterr().out  # label class score [x0, y0, x1, y1]
    assert printed.strip().endswith("[12, 20, 40, 30]") and len(printed.split()) == 7
