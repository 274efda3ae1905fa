"""cambridge-data and sevenscenes-data: the published layouts read right, nerfstudio's frame is
recorded exactly in dataparser_transforms.json, bad files name their line, a model trains on each,
and ns-nifr-refine localises a split's queries with errors in the dataset's metres.

The fixtures are the tiny synthetic scene (conftest.tiny_scene) written in each dataset's layout,
so that a training on them is meaningful and the poses are exactly known."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from nifr_ns.dataparsers import (
    CambridgeDataParserConfig,
    SevenScenesDataParserConfig,
    read_cambridge,
    read_sevenscenes,
    read_split,
)
from nifr_ns.geometry import camera_center, invert_pose, matrix_to_quaternion, perturb_pose
from nifr_ns.pose_io import DataparserTransform, PoseFileError, PoseSet, write_hloc
from nifr_ns.queries import QueryFiles

from conftest import tiny_training_config

TRAIN_ITERATIONS = 4  # enough to write a checkpoint and exercise every loss; quality is not tested here
CAMBRIDGE_HEADER = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"


# --- fixtures in the published layouts -------------------------------------------------------------


def _cambridge_line(name: str, T_cw: np.ndarray) -> str:
    values = [*camera_center(T_cw), *matrix_to_quaternion(T_cw[:3, :3])]
    return " ".join([name, *(f"{v:.12f}" for v in values)])


def write_cambridge(root: Path, tiny_scene, nvm_focals: dict | None = None) -> Path:
    """Training views as seq1 (10) and seq2 (10), queries as seq3, with a reconstruction.nvm whose
    names are .jpg under another prefix, as in the published scenes."""
    focal = tiny_scene.train.images[0].intrinsics.fx
    splits = {"train": [], "test": []}
    nvm_lines = []
    views = [(im, tiny_scene.out, "train") for im in tiny_scene.train] + [
        (im, tiny_scene.out / "queries", "test") for im in tiny_scene.queries_gt
    ]
    for i, (image, source_root, split) in enumerate(views):
        seq, frame = (1 + i // 10, i % 10 + 1) if split == "train" else (3, i - len(tiny_scene.train) + 1)
        name = f"seq{seq}/frame{frame:05d}.png"
        (root / f"seq{seq}").mkdir(parents=True, exist_ok=True)
        shutil.copy(source_root / image.name, root / name)
        splits[split].append(_cambridge_line(name, image.T_cw))
        f = (nvm_focals or {}).get(name, focal)
        q, c = matrix_to_quaternion(image.T_cw[:3, :3]), camera_center(image.T_cw)
        nvm_lines.append(" ".join([f"Scene\\seq{seq}\\frame{frame:05d}.jpg", str(f), *map(str, q), *map(str, c), "0", "0"]))
    for split, lines in splits.items():
        (root / f"dataset_{split}.txt").write_text(CAMBRIDGE_HEADER + "\n".join(lines) + "\n")
    (root / "reconstruction.nvm").write_text(f"NVM_V3\n\n{len(nvm_lines)}\n" + "\n".join(nvm_lines) + "\n\n0\n")
    return root


def write_sevenscenes(root: Path, tiny_scene) -> Path:
    """Training views as seq-01 and seq-02, queries as seq-03; depth with 65535 where unknown."""
    views = [(im, tiny_scene.out) for im in tiny_scene.train] + [(im, tiny_scene.out / "queries") for im in tiny_scene.queries_gt]
    for i, (image, source_root) in enumerate(views):
        seq, frame = (1 + i // 10, i % 10) if i < len(tiny_scene.train) else (3, i - len(tiny_scene.train))
        stem = root / f"seq-{seq:02d}" / f"frame-{frame:06d}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source_root / image.name, f"{stem}.color.png")
        depth = cv2.imread(str(source_root / image.name.replace("images/", "depths/")), cv2.IMREAD_UNCHANGED)
        depth = np.where(depth == 0, 65535, depth).astype(np.uint16)
        depth[:4, :4] = 65535  # no return: the room has none, the Kinect many
        cv2.imwrite(f"{stem}.depth.png", depth)
        np.savetxt(f"{stem}.pose.txt", invert_pose(image.T_cw), fmt="%.12e")
    (root / "TrainSplit.txt").write_text("sequence1\nsequence2\n")
    (root / "TestSplit.txt").write_text("sequence3\n")
    return root


@pytest.fixture(scope="module")
def cambridge(tiny_scene, tmp_path_factory) -> Path:
    return write_cambridge(tmp_path_factory.mktemp("cambridge") / "Scene", tiny_scene)


@pytest.fixture(scope="module")
def sevenscenes(tiny_scene, tmp_path_factory) -> Path:
    return write_sevenscenes(tmp_path_factory.mktemp("7scenes") / "scene", tiny_scene)


# --- readers -----------------------------------------------------------------------------------


def test_cambridge_splits_select_their_frames_with_their_poses(cambridge, tiny_scene) -> None:
    train, test = read_cambridge(cambridge, "train"), read_cambridge(cambridge, "test")
    assert train.names[:2] == ["seq1/frame00001.png", "seq1/frame00002.png"] and len(train) == 20
    assert test.names == [f"seq3/frame{i:05d}.png" for i in range(1, 5)]
    expected = np.stack([im.T_cw for im in [*tiny_scene.train, *tiny_scene.queries_gt]])
    np.testing.assert_allclose(np.stack([im.T_cw for im in [*train, *test]]), expected, atol=1e-9)
    k = test.by_name("seq3/frame00002.png").intrinsics
    assert (k.width, k.height, k.cx, k.cy) == (64, 48, 32.0, 24.0)
    assert k.fx == pytest.approx(tiny_scene.train.images[0].intrinsics.fx)
    assert train.root == cambridge and train.form == "hloc"


def test_sevenscenes_splits_select_sequences_and_convert_camera_to_world(sevenscenes, tiny_scene, tmp_path) -> None:
    train, test = read_sevenscenes(sevenscenes, "train", focal=50.0), read_sevenscenes(sevenscenes, "test", focal=50.0)
    assert len(train) == 20 and train.names[10] == "seq-02/frame-000000.color.png"
    assert test.names == [f"seq-03/frame-{i:06d}.color.png" for i in range(4)]
    np.testing.assert_allclose(test.images[1].T_cw, tiny_scene.queries_gt.images[1].T_cw, atol=1e-9)
    assert test.images[1].extra["depth_file_path"] == "seq-03/frame-000001.depth.png"
    assert test.images[0].intrinsics.K().tolist() == [[50.0, 0, 32.0], [0, 50.0, 24.0], [0, 0, 1]]
    (sevenscenes / "TrainSplit.txt").write_text("Sequence2\n")  # the published files are not consistent in case
    try:
        assert {name.split("/")[0] for name in read_sevenscenes(sevenscenes, "train").names} == {"seq-02"}
    finally:
        (sevenscenes / "TrainSplit.txt").write_text("sequence1\nsequence2\n")


def test_nvm_focal_lengths_apply_per_image_and_scale_with_the_resize(tiny_scene, tmp_path) -> None:
    data = write_cambridge(tmp_path / "Scene", tiny_scene, nvm_focals={"seq1/frame00002.png": 77.0})
    config = CambridgeDataParserConfig(data=data, image_height=24)
    train = read_split(config, "train")
    k = train.by_name("seq1/frame00002.png").intrinsics
    assert (k.width, k.height, k.fx, k.fy, k.cx, k.cy) == (32, 24, 38.5, 38.5, 16.0, 12.0)
    assert train.by_name("seq1/frame00001.png").intrinsics.fx == pytest.approx(tiny_scene.train.images[0].intrinsics.fx / 2)
    cached = data / "nifr_cache" / "images_h24" / "seq1" / "frame00002.png"
    assert train.root == cached.parents[1] and Image.open(cached).size == (32, 24)
    stamp = cached.stat().st_mtime_ns
    read_split(config, "train")
    assert cached.stat().st_mtime_ns == stamp, "the cache is written once"


def test_without_nvm_the_focal_comes_from_the_config_or_fails_clearly(cambridge, tmp_path) -> None:
    data = tmp_path / "Scene"
    shutil.copytree(cambridge, data, ignore=shutil.ignore_patterns("reconstruction.nvm", "nifr_cache"))
    with pytest.raises(PoseFileError, match="no focal length given"):
        read_cambridge(data, "train")
    assert read_cambridge(data, "train", focal=1674.84).images[0].intrinsics.fx == 1674.84


# --- nerfstudio's frame ----------------------------------------------------------------------------


def test_a_known_camera_lands_where_expected_in_nerfstudios_frame_and_back(tmp_path) -> None:
    """Upright cameras on a line along world x, all looking along +x: 'up' orientation keeps the
    axes, the mean centre becomes the origin and the farthest camera sits at camera_extent."""
    data = tmp_path / "Axes"
    (data / "seq1").mkdir(parents=True)
    R_cw = np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])  # rows: camera right = -y, down = -z, forward = +x
    centres = [(10.0, 0, 1.5), (20, 5, 1.5), (30, -5, 1.5), (40, 0, 1.5)]
    lines = []
    for i, c in enumerate(centres, start=1):
        Image.new("RGB", (8, 6)).save(data / "seq1" / f"frame{i:05d}.png")
        lines.append(f"seq1/frame{i:05d}.png {c[0]} {c[1]} {c[2]} " + " ".join(map(str, matrix_to_quaternion(R_cw))))
    (data / "dataset_train.txt").write_text(CAMBRIDGE_HEADER + "\n".join(lines) + "\n")
    (data / "dataset_test.txt").write_text(CAMBRIDGE_HEADER + lines[1] + "\n")
    outputs = CambridgeDataParserConfig(data=data, focal=10.0).setup().get_dataparser_outputs("train")
    c2w = outputs.cameras.camera_to_worlds.double().numpy()
    scale = 0.5 / 15  # farthest camera is 15 m from the mean centre (25, 0, 1.5)
    assert outputs.dataparser_scale == pytest.approx(scale)
    np.testing.assert_allclose(c2w[0, :, 3], [-0.5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(c2w[1, :, 3], [-5 * scale, 5 * scale, 0], atol=1e-6)
    # OpenGL camera axes in nerfstudio's frame: right = -y, up = +z, backward = -x
    np.testing.assert_allclose(c2w[0, :, :3], [[0, 0, -1], [-1, 0, 0], [0, 1, 0]], atol=1e-6)

    outputs.save_dataparser_transform(tmp_path / "dataparser_transforms.json")
    transform = DataparserTransform.load(tmp_path / "dataparser_transforms.json")
    T_cw = np.eye(4)
    T_cw[:3, :3], T_cw[:3, 3] = R_cw, -R_cw @ np.array(centres[0])
    np.testing.assert_allclose(transform.nerfstudio_c2w_to_T_cw(c2w[0]), T_cw, atol=1e-5)
    np.testing.assert_allclose(transform.T_cw_to_nerfstudio_c2w(T_cw)[:3], c2w[0], atol=1e-6)
    assert outputs.scene_box.aabb.tolist() == [[-1.0] * 3, [1.0] * 3]


def test_one_absurd_training_pose_does_not_set_the_scale() -> None:
    """A camera kilometres away (a failed SfM pose) would squeeze the scene into a corner."""
    from nifr_ns.dataparsers import normalisation
    from nifr_ns.geometry import look_at
    from nifr_ns.pose_io import Intrinsics, PosedImage

    k = Intrinsics.pinhole(8, 6, 10, 10, 4, 3)
    eyes = [(x, 0.0, 1.5) for x in (-2.0, -1.0, 0.0, 1.0, 2.0, 3000.0)]
    images = [PosedImage(f"f{i}.png", look_at(np.array(e), np.array(e) + [0, 10, 0], np.array([0, 0, 1.0])), k)
              for i, e in enumerate(eyes)]
    transform, scale = normalisation(PoseSet(images, "hloc", Path(".")), CambridgeDataParserConfig())
    assert scale == pytest.approx(0.5 / 2.0, rel=1e-6)  # the inliers' extent, not the outlier's
    np.testing.assert_allclose(transform[:3, 3], [0, 0, -1.5], atol=1e-6)  # centred on the inliers


# --- malformed input names file and line ----------------------------------------------------------


@pytest.mark.parametrize(
    "case, file, line, message",
    [
        ("field count", "dataset_train.txt", 5, "expected 8 columns"),
        ("not a number", "dataset_train.txt", 5, "not a number"),
        ("zero quaternion", "dataset_train.txt", 5, "norm 0"),
        ("nan quaternion", "dataset_train.txt", 5, "not a finite number"),
        ("missing image", "dataset_train.txt", 5, "not found"),
        ("nvm line", "reconstruction.nvm", 5, "expected 11 columns"),
    ],
)
def test_malformed_cambridge_files_name_file_and_line(cambridge, tmp_path, case, file, line, message) -> None:
    data = tmp_path / "Scene"
    shutil.copytree(cambridge, data, ignore=shutil.ignore_patterns("nifr_cache"))
    lines = (data / file).read_text().split("\n")
    fields = lines[line - 1].split()
    if case == "field count":
        fields = fields[:7]
    elif case == "not a number":
        fields[2] = "1,5"
    elif case in ("zero quaternion", "nan quaternion"):
        fields[4:8] = ["0", "0", "0", "0"] if case == "zero quaternion" else ["nan", "0", "0", "0"]
    elif case == "missing image":
        (data / fields[0]).unlink()
    elif case == "nvm line":
        fields = fields[:3]
    lines[line - 1] = " ".join(fields)
    (data / file).write_text("\n".join(lines))
    with pytest.raises(PoseFileError, match=message) as error:
        read_cambridge(data, "train")
    assert (error.value.path, error.value.line) == (data / file, line)
    assert f"{data / file}:{line}:" in str(error.value)


@pytest.mark.parametrize(
    "case, file, line, message",
    [
        ("missing sequence", "TrainSplit.txt", 2, "seq-07 not found"),
        ("not a sequence", "TrainSplit.txt", 1, "expected 'sequenceN'"),
        ("sequence twice", "TrainSplit.txt", 2, "seq-01 is listed twice"),
        ("pose not a number", "seq-02/frame-000003.pose.txt", 2, "not a number"),
        ("pose not rigid", "seq-02/frame-000003.pose.txt", None, "not rigid"),
    ],
)
def test_malformed_sevenscenes_files_name_file_and_line(sevenscenes, tmp_path, case, file, line, message) -> None:
    data = tmp_path / "scene"
    shutil.copytree(sevenscenes, data, ignore=shutil.ignore_patterns("nifr_cache"))
    if case == "missing sequence":
        (data / file).write_text("sequence1\nsequence7\n")
    elif case == "not a sequence":
        (data / file).write_text("seq-01\n")
    elif case == "sequence twice":
        (data / file).write_text("sequence1\nSequence1\n")
    else:
        rows = (data / file).read_text().splitlines()
        rows[1] = rows[1].replace(rows[1].split()[0], "x" if case == "pose not a number" else "3.0", 1)
        (data / file).write_text("\n".join(rows))
    with pytest.raises(PoseFileError, match=message) as error:
        read_sevenscenes(data, "train")
    assert (error.value.path, error.value.line) == (data / file, line)


def test_exported_split_is_a_query_set_for_ns_nifr_bench(cambridge, tmp_path) -> None:
    """ns-nifr-bench reads files only: the export writes the split beside its (resized) images."""
    from nifr_ns.queries import load_query_set
    from nifr_ns.scripts.export_split import ExportSplit, main

    data = tmp_path / "Scene"
    shutil.copytree(cambridge, data, ignore=shutil.ignore_patterns("nifr_cache"))
    (tmp_path / "config.yml").write_text("not a config\n")  # unreadable: the defaults and --data are used
    folder = main(ExportSplit(dataset="cambridge", load_config=tmp_path / "config.yml", data=data, perturb=(3.0, 0.2)))
    assert folder == data
    query_set = load_query_set(folder / "test_init_perturbed.txt", folder / "test_intrinsics.txt",
                               folder / "test_gt.txt", folder / "test_intrinsics.txt")
    assert [q.name for q in query_set.queries] == read_cambridge(data, "test").names
    errors = [perturb_errors(q) for q in query_set.queries]
    np.testing.assert_allclose(errors, [[0.2, 3.0]] * 4, atol=1e-6)


def perturb_errors(query) -> list:
    from nifr_ns.geometry import pose_errors

    return [float(e) for e in pose_errors(query.T_cw_file, query.T_cw_gt)]


# --- training and refinement on the fixtures ---------------------------------------------------------


def _train(data: Path, dataparser, out: Path) -> Path:
    from nifr_ns.pipeline import train

    config = tiny_training_config(data, out, TRAIN_ITERATIONS)
    config.pipeline.datamanager.dataparser = dataparser
    config.pipeline.datamanager.train_num_rays_per_batch = 256  # a smoke run: keep it to seconds on 2 cores
    return train(config)


@pytest.fixture(scope="module")
def trained_cambridge(cambridge, tmp_path_factory) -> Path:
    return _train(cambridge, CambridgeDataParserConfig(), tmp_path_factory.mktemp("runs_cambridge"))


def _assert_run_maps_the_dataset_frame(config_path: Path, split: PoseSet) -> None:
    """A checkpoint was written, and dataparser_transforms.json maps the split's metric poses onto
    the trained pipeline's cameras, and back, exactly."""
    from nifr_ns.pipeline import load_pipeline
    from nifr_ns.scripts.refine import model_transform

    assert list((config_path.parent / "nerfstudio_models").glob("step-*.ckpt"))
    config, pipeline = load_pipeline(config_path, test_mode="val")
    transform = model_transform(config)
    assert transform.scale == pipeline.datamanager.train_dataparser_outputs.dataparser_scale
    T_cw = np.stack([image.T_cw for image in split])
    c2w_ns = pipeline.datamanager.train_dataset.cameras.camera_to_worlds.double().numpy()
    np.testing.assert_allclose(transform.T_cw_to_nerfstudio_c2w(T_cw)[:, :3], c2w_ns, atol=1e-6)
    np.testing.assert_allclose(transform.nerfstudio_c2w_to_T_cw(c2w_ns), T_cw, atol=1e-5)
    # the normalisation is nerfstudio-like: training cameras centred, within camera_extent
    centres = c2w_ns[:, :, 3]
    assert np.abs(centres.mean(axis=0)).max() < 1e-5 and np.abs(centres).max() == pytest.approx(0.5, abs=1e-5)


def test_training_on_cambridge_writes_a_checkpoint_and_keeps_the_metric_frame(trained_cambridge, cambridge) -> None:
    _assert_run_maps_the_dataset_frame(trained_cambridge, read_cambridge(cambridge, "train"))


def test_training_on_sevenscenes_with_depth_writes_a_checkpoint(sevenscenes, tiny_scene, tmp_path) -> None:
    focal = tiny_scene.train.images[0].intrinsics.fx
    config_path = _train(sevenscenes, SevenScenesDataParserConfig(focal=focal, load_depth=True), tmp_path)
    _assert_run_maps_the_dataset_frame(config_path, read_sevenscenes(sevenscenes, "train", focal))
    cleaned = cv2.imread(str(sevenscenes / "nifr_cache" / "depth_64x48" / "seq-01" / "frame-000000.depth.png"), cv2.IMREAD_UNCHANGED)
    raw = cv2.imread(str(sevenscenes / "seq-01" / "frame-000000.depth.png"), cv2.IMREAD_UNCHANGED)
    assert (raw == 65535).any() and not (cleaned == 65535).any()
    np.testing.assert_array_equal(cleaned[raw != 65535], raw[raw != 65535])


def test_refine_takes_a_dataset_split_and_reports_metric_errors(trained_cambridge, cambridge, tmp_path, capsys) -> None:
    from nifr_ns.scripts.refine import RefineCommand, main

    test = read_cambridge(cambridge, "test")
    rng = np.random.default_rng(0)
    init = test.with_poses({im.name: perturb_pose(im.T_cw, 4.0, 0.3, rng) for im in test})
    write_hloc(init, tmp_path / "init.txt")  # names as in the split, no intrinsics file
    out = tmp_path / "out"
    source = QueryFiles(tmp_path / "init.txt", dataset="cambridge", max_queries=2)
    command = RefineCommand(load_config=trained_cambridge, output=out, source=source, figures=0)
    assert main(command) == 0
    report = json.loads((out / "report.json").read_text())
    assert [q["name"] for q in report["queries"]] == test.names[:2]
    for query in report["queries"]:
        # the initial error is measured against the dataset's ground truth, in its metres and degrees
        assert query["initial_trans_err"] == pytest.approx(0.3, abs=1e-6)
        assert query["initial_rot_err"] == pytest.approx(4.0, abs=1e-6)
        assert np.isfinite(query["trans_err"]) and np.isfinite(query["rot_err"])
    refined = (out / "poses.txt").read_text().splitlines()[1:]
    assert [line.split()[0] for line in refined] == test.names[:2]

    # a name outside the split is refused with file and line, and nothing is written
    (tmp_path / "bad.txt").write_text((tmp_path / "init.txt").read_text().replace("seq3/frame00002", "seq9/frame00002"))
    source = QueryFiles(tmp_path / "bad.txt", dataset="cambridge", data=cambridge)
    command = RefineCommand(load_config=trained_cambridge, output=tmp_path / "bad", source=source)
    assert main(command) == 2
    assert "bad.txt:3" in capsys.readouterr().out and not (tmp_path / "bad").exists()
