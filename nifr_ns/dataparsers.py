"""The localization benchmarks as nerfstudio data: Cambridge Landmarks and 7-Scenes.

Owns one reader per published layout (:func:`read_cambridge`, :func:`read_sevenscenes`); each
returns a split as a ``PoseSet`` of ground-truth world-to-camera poses in the dataset's own metric
frame, with per-image intrinsics and image names as the split writes them. The same readers feed
the nerfstudio dataparsers ``cambridge-data`` and ``sevenscenes-data`` (registered in
pyproject.toml) and the query sets of ``ns-nifr-refine --dataset`` (:func:`benchmark_split`), so
training and evaluation cannot disagree on a pose or a focal length. Downscaled image copies
(and cleaned depth maps) are written once into a cache folder next to the data.

Layouts (DESIGN.md, "Conventions"):

Cambridge Landmarks (Kendall et al., PoseNet), one folder per scene::

    dataset_train.txt, dataset_test.txt   3 header lines, then `seqN/frameXXXXX.png X Y Z W P Q R`:
                                          camera centre X Y Z (metres) and the world-to-camera
                                          rotation as a w-first quaternion; OpenCV camera axes
    reconstruction.nvm                    VisualSfM NVM_V3 model: per camera `name focal qw qx qy qz
                                          cx cy cz radial 0`, names ending in .jpg (matched to the
                                          .png images by sequence and frame); optional
    seqN/frameXXXXX.png                   1920x1080 RGB video frames

7-Scenes (Shotton et al.), one folder per scene::

    TrainSplit.txt, TestSplit.txt         lines `sequenceN`: the sequences of the split
    seq-0N/frame-XXXXXX.color.png         640x480 RGB
    seq-0N/frame-XXXXXX.pose.txt          4x4 camera-to-world, OpenCV camera axes, metres
    seq-0N/frame-XXXXXX.depth.png         uint16 millimetres, 65535 = no measurement, from the
                                          Kinect's depth camera: NOT registered to the colour image

Choices for nerfstudio's frame (:class:`BenchmarkDataParserConfig`): the dataset's metric frame
is oriented so that the training cameras' mean up vector is +z ("up", the datasets are handheld
and mostly upright), centred on the mean training camera centre and scaled so that the training
camera centres span [-camera_extent, camera_extent] (0.5 by default) on their largest axis
(cameras far from all others, i.e. failed poses, are left out of these statistics). The
nifr model is nerfacto-style with an L-infinity scene contraction whose linear (full-resolution)
region is [-1, 1]^3: with the cameras filling half of it, the facades and walls they look at
(for Cambridge, tens of metres beyond the camera path; for 7-Scenes, the room around the
trajectory) stay in the linear region, and only the far background and sky are contracted into
[-2, 2]. nerfstudio's default (cameras fill [-1, 1]) would contract most of an outdoor scene's
content. The scene box is [-scene_scale, scene_scale]^3 = the linear region. The normalisation
is computed from the training split alone and recorded exactly in the run's
dataparser_transforms.json (``dataparser_transform``/``dataparser_scale``), so every pose read or
written by the plugin's commands stays in the dataset's metric frame
(``pose_io.DataparserTransform``).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Set, Tuple, Type

import cv2
import numpy as np
import torch
from PIL import Image

from nerfstudio.cameras import camera_utils
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from nifr_ns.geometry import T_cw_to_opengl_c2w, as_4x4, invert_pose, quaternion_to_matrix
from nifr_ns.pose_io import (  # the pose files' own line-level validation, shared
    Intrinsics,
    PosedImage,
    PoseFileError,
    PoseSet,
    _named_records,
    _numbers,
    _records,
    _rigid_transform,
)

Split = Literal["train", "test"]
DatasetKind = Literal["cambridge", "sevenscenes"]

# The focal length most Cambridge Landmarks pipelines use when they do not read the nvm: about
# 744 px for 854x480 images (DFNet's and NeFeS's loaders), i.e. 744.375 * 1080 / 480 px here.
CAMBRIDGE_COMMON_FOCAL_1080P = 1674.84
SEVENSCENES_FOCAL = 585.0  # the dataset's published focal length for its 640x480 images
SEVENSCENES_DEPTH_INVALID = 65535
_CAMBRIDGE_HEADER_LINES = 3
# A camera centre farther than this many median distances from the median centre is left out of
# the normalisation (not of training): one bad pose would otherwise squeeze the scene into a corner.
_OUTLIER_DISTANCE_FACTOR = 10.0
_QUATERNION_NORM_TOLERANCE = 1e-2  # the files print quaternions to about 6 digits: looser than hloc text


# --- configuration ------------------------------------------------------------------------------


@dataclass
class BenchmarkDataParserConfig(DataParserConfig):
    """Settings shared by the Cambridge Landmarks and 7-Scenes dataparsers."""

    data: Path = Path()
    """The scene folder (e.g. .../KingsCollege or .../chess)."""
    image_height: Optional[int] = None
    """Resize images to this height (width follows the aspect ratio) and scale the intrinsics to
    match, e.g. 480 for Cambridge's 1920x1080 frames; None keeps the stored size. Resized copies
    are written once to the cache folder."""
    cache_dir: Optional[Path] = None
    """Where resized images and cleaned depth maps are written; default DATA/nifr_cache."""
    train_frame_stride: int = 1
    """Train on every N-th frame of the training split (7-Scenes has thousands of near-duplicates,
    and nifr keeps all training images in memory)."""
    eval_frame_stride: int = 1
    """nerfstudio's evaluation images (ns-eval, viewer, bench PSNR): every N-th test frame.
    ns-nifr-refine --dataset always reads the whole test split."""
    orientation_method: Literal["up", "vertical", "pca", "none"] = "up"
    """nerfstudio's auto-orientation of the training cameras (up: mean camera up vector -> +z)."""
    center_method: Literal["poses", "focus", "none"] = "poses"
    """Origin: mean training camera centre (poses), their focus of attention, or the dataset's."""
    auto_scale_poses: bool = True
    """Scale the training camera centres to [-camera_extent, camera_extent]; off: metres."""
    camera_extent: float = 0.5
    """Largest absolute camera coordinate after scaling: half of the contraction's linear region,
    which leaves room for the scene the cameras look at."""
    scene_scale: float = 1.0
    """Half size of the scene box (the linear region of the scene contraction)."""

    def __post_init__(self) -> None:
        if self.image_height is not None and self.image_height < 1:
            raise ValueError(f"image_height must be positive, got {self.image_height}")
        if self.train_frame_stride < 1 or self.eval_frame_stride < 1:
            raise ValueError("frame strides must be at least 1")
        if self.camera_extent <= 0 or self.scene_scale <= 0:
            raise ValueError("camera_extent and scene_scale must be positive")


@dataclass
class CambridgeDataParserConfig(BenchmarkDataParserConfig):
    """Cambridge Landmarks: dataset_train.txt / dataset_test.txt poses, intrinsics from reconstruction.nvm."""

    _target: Type = field(default_factory=lambda: Cambridge)
    focal: Optional[float] = None
    """Focal length in pixels of the stored images, for images that reconstruction.nvm does not
    list (or when there is no nvm). Commonly used: 1674.84 for 1920x1080 (744.375 at 854x480)."""


@dataclass
class SevenScenesDataParserConfig(BenchmarkDataParserConfig):
    """Microsoft 7-Scenes: TrainSplit.txt / TestSplit.txt sequences, 4x4 camera-to-world poses."""

    _target: Type = field(default_factory=lambda: SevenScenes)
    focal: float = SEVENSCENES_FOCAL
    """Focal length in pixels of the 640x480 colour images (the dataset's published value)."""
    load_depth: bool = False
    """Give the Kinect depth maps to the model's optional depth loss (--pipeline.model.depth-loss-mult).
    Caveat: the depth camera is not registered to the colour camera (another viewpoint and
    focal), so a depth pixel belongs to a slightly different ray than the colour pixel: expect
    errors of several pixels at depth edges, and use a small weight. Off by default: nifr learns
    the geometry from the images alone."""


# --- the readers: one per published layout -------------------------------------------------------


def read_cambridge(data: Path, split: Split, focal: Optional[float] = None) -> PoseSet:
    """A Cambridge Landmarks split at the stored image size, names as in dataset_{split}.txt.

    Intrinsics: PINHOLE with the nvm's focal length (or ``focal``) and the principal point at
    the image centre; the nvm's radial distortion term is ignored (small, and in VisualSfM's
    own convention). Raises PoseFileError naming the file and line of any problem.
    """
    data = Path(data)
    path = data / f"dataset_{split}.txt"
    if not path.is_file():
        raise PoseFileError(path, "not found: expected a Cambridge Landmarks scene folder (dataset_train.txt, dataset_test.txt)")
    nvm = data / "reconstruction.nvm"
    focals = read_nvm_focals(nvm) if nvm.is_file() else {}
    if not focals and focal is None:
        raise PoseFileError(
            nvm,
            "not found, and no focal length given: set the focal (--pipeline.datamanager.dataparser.focal; "
            f"commonly {CAMBRIDGE_COMMON_FOCAL_1080P} for 1920x1080 frames)",
        )
    images: List[PosedImage] = []
    records = _records_after_header(path, _CAMBRIDGE_HEADER_LINES)
    for line, name, values in _named_records(path, records, "seqN/frameXXXXX.png X Y Z W P Q R"):
        centre, q = np.array(values[:3]), np.array(values[3:])
        if abs(np.linalg.norm(q) - 1) > _QUATERNION_NORM_TOLERANCE:
            raise PoseFileError(path, f"quaternion W P Q R has norm {np.linalg.norm(q):.6g}, not 1", line)
        f = focals.get(_frame_key(name), focal)
        if f is None:
            raise PoseFileError(path, f"{name!r} is not in {nvm.name} and no focal length was given", line)
        R = quaternion_to_matrix(q)
        T_cw = np.eye(4)
        T_cw[:3, :3], T_cw[:3, 3] = R, -R @ centre  # the file gives the centre C: t = -R C
        images.append(PosedImage(name, T_cw, _centred_pinhole(_image_size(data, name, path, line), f)))
    return _split_set(images, data, path)


def read_nvm_focals(path: Path) -> Dict[str, float]:
    """Focal length of each camera of the first model of a VisualSfM NVM_V3 file, keyed by
    'seqN/frameXXXXX' (see _frame_key); stops reading after the cameras (the points can be large)."""
    focals: Dict[str, float] = {}
    with open(path) as file:
        header = file.readline()
        if not header.startswith("NVM_V3"):
            raise PoseFileError(path, "not an NVM_V3 file (first line must start with NVM_V3)", 1)
        count, number = None, 1
        for number, text in enumerate(file, start=2):
            fields = text.split()
            if not fields:
                continue
            if count is None:
                if len(fields) != 1 or not fields[0].isdigit():
                    raise PoseFileError(path, f"expected the number of cameras, got {text.strip()!r}", number)
                count = int(fields[0])
            elif len(focals) < count:
                if len(fields) != 11:
                    raise PoseFileError(path, f"expected 11 columns 'name focal qw qx qy qz cx cy cz radial 0', got {len(fields)}", number)
                try:
                    value = _numbers(fields[1:2])[0]
                except ValueError as error:
                    raise PoseFileError(path, str(error), number) from None
                if value <= 0:
                    raise PoseFileError(path, f"focal length must be positive, got {value}", number)
                focals[_frame_key(fields[0])] = value
            if count is not None and len(focals) == count:
                break
    if count is None or len(focals) < count:
        raise PoseFileError(path, f"ends before its {count if count is not None else 'camera count and'} cameras", number)
    return focals


def read_sevenscenes(data: Path, split: Split, focal: float = SEVENSCENES_FOCAL) -> PoseSet:
    """A 7-Scenes split at the stored image size, names 'seq-0N/frame-XXXXXX.color.png'.

    Intrinsics: PINHOLE with ``focal`` and the principal point at the image centre. Each image's
    ``extra['depth_file_path']`` names its depth map (relative to ``data``). Raises PoseFileError
    naming the file and line of any problem (the split file for a missing sequence folder, the
    pose file for a malformed pose).
    """
    data = Path(data)
    path = data / ("TrainSplit.txt" if split == "train" else "TestSplit.txt")
    if not path.is_file():
        raise PoseFileError(path, "not found: expected a 7-Scenes scene folder (TrainSplit.txt, TestSplit.txt)")
    images: List[PosedImage] = []
    seen: Set[str] = set()
    for line, fields in _records(path):
        match = re.fullmatch(r"sequence(\d+)", fields[0], re.IGNORECASE)
        if len(fields) != 1 or match is None:
            raise PoseFileError(path, f"expected 'sequenceN', got {' '.join(fields)!r}", line)
        sequence = f"seq-{int(match.group(1)):02d}"
        if sequence in seen:
            raise PoseFileError(path, f"{sequence} is listed twice", line)
        seen.add(sequence)
        if not (data / sequence).is_dir():
            raise PoseFileError(path, f"sequence folder {sequence} not found in {data} (unzip {sequence}.zip there)", line)
        frames = sorted((data / sequence).glob("frame-*.color.png"))
        if not frames:
            raise PoseFileError(path, f"{sequence} has no frame-XXXXXX.color.png images", line)
        for image_path in frames:
            name = f"{sequence}/{image_path.name}"
            stem = name[: -len(".color.png")]
            T_cw = invert_pose(_read_4x4(data / f"{stem}.pose.txt"))  # camera-to-world -> world-to-camera
            intrinsics = _centred_pinhole(_image_size(data, name, path, line), focal)
            images.append(PosedImage(name, T_cw, intrinsics, {"depth_file_path": f"{stem}.depth.png"}))
    return _split_set(images, data, path)


def read_split(config: BenchmarkDataParserConfig, split: Split) -> PoseSet:
    """The split of ``config``'s dataset, resized to config.image_height (cached) when set."""
    if isinstance(config, CambridgeDataParserConfig):
        poses = read_cambridge(config.data, split, config.focal)
    elif isinstance(config, SevenScenesDataParserConfig):
        poses = read_sevenscenes(config.data, split, config.focal)
    else:
        raise TypeError(f"not a benchmark dataparser config: {type(config).__name__}")
    if config.image_height is None:
        return poses
    return resized(poses, config.image_height, cache_root(config) / f"images_h{config.image_height}")


CONFIGS: Dict[str, Type[BenchmarkDataParserConfig]] = {
    "cambridge": CambridgeDataParserConfig,
    "sevenscenes": SevenScenesDataParserConfig,
}


def benchmark_split(kind: DatasetKind, split: Split, data: Optional[Path], model_config: Optional[Path]) -> PoseSet:
    """A split for ns-nifr-refine --dataset: read as the model's own dataparser read its data
    (image size, focal, cache) when the model was trained on this dataset kind, else with defaults."""
    import yaml

    trained: Optional[BenchmarkDataParserConfig] = None
    if model_config is not None and Path(model_config).is_file():
        try:
            # Only the dataparser is wanted; a file that is no config fails later, in load_pipeline.
            datamanager = yaml.load(Path(model_config).read_text(), Loader=yaml.Loader).pipeline.datamanager
        except Exception:  # noqa: BLE001 - any unreadable config means "no settings to copy"
            datamanager = None
        if datamanager is not None and isinstance(datamanager.dataparser, CONFIGS[kind]):
            # nerfstudio's rule: the datamanager's data, when set, is the dataparser's data
            trained = replace(datamanager.dataparser, data=Path(datamanager.data or datamanager.dataparser.data))
    if data is None and trained is None:
        raise PoseFileError(
            model_config or Path("."), f"the model was not trained on {kind} data: give the scene folder with --data"
        )
    config = trained if trained is not None else CONFIGS[kind]()
    return read_split(replace(config, data=Path(data) if data is not None else config.data), split)


# --- the nerfstudio dataparsers ------------------------------------------------------------------


class BenchmarkDataParser(DataParser):
    """Dataparser outputs from read_split: train split for training, test split for val/test."""

    config: BenchmarkDataParserConfig

    def __init__(self, config: BenchmarkDataParserConfig):
        super().__init__(config)
        self._splits: Dict[str, PoseSet] = {}

    def _read(self, split: Split) -> PoseSet:
        # nerfstudio asks for "train" and then for the eval split, sometimes twice: read each once.
        if split not in self._splits:
            self._splits[split] = read_split(self.config, split)
        return self._splits[split]

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        train = self._read("train")
        which: Split = "train" if split == "train" else "test"  # nerfstudio's val and test: the test split
        stride = self.config.train_frame_stride if which == "train" else self.config.eval_frame_stride
        images = self._read(which).images[::stride]
        transform, scale = normalisation(train, self.config)
        if which == "train":
            CONSOLE.log(
                f"{type(self).__name__}: {len(images)} training images; 1 scene unit = {1 / scale:.4g} m "
                f"(nerfacto's default near plane, 0.05 units, is {0.05 / scale:.3g} m: see --pipeline.model.near-plane)"
            )
        c2w = transform @ T_cw_to_opengl_c2w(np.stack([image.T_cw for image in images]))
        c2w[:, :3, 3] *= scale
        K = [image.intrinsics for image in images]
        cameras = Cameras(
            camera_to_worlds=torch.from_numpy(c2w[:, :3, :4]).float(),
            fx=torch.tensor([[k.fx] for k in K]),
            fy=torch.tensor([[k.fy] for k in K]),
            cx=torch.tensor([[k.cx] for k in K]),
            cy=torch.tensor([[k.cy] for k in K]),
            width=torch.tensor([[k.width] for k in K], dtype=torch.int32),
            height=torch.tensor([[k.height] for k in K], dtype=torch.int32),
            camera_type=CameraType.PERSPECTIVE,
        )
        s = self.config.scene_scale
        return DataparserOutputs(
            image_filenames=[self._read(which).root / image.name for image in images],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-s, -s, -s], [s, s, s]], dtype=torch.float32)),
            # float32 because nerfstudio multiplies it with float32 poses (e.g. ns-export);
            # the cameras above were made with exactly these float32 values.
            dataparser_transform=torch.from_numpy(transform[:3]).float(),
            dataparser_scale=scale,
            metadata=self._depth_metadata(images),
        )

    def _depth_metadata(self, images: Sequence[PosedImage]) -> dict:
        return {}


class Cambridge(BenchmarkDataParser):
    """Cambridge Landmarks (see the module docstring)."""

    config: CambridgeDataParserConfig


class SevenScenes(BenchmarkDataParser):
    """7-Scenes (see the module docstring); depth only with config.load_depth."""

    config: SevenScenesDataParserConfig

    def _depth_metadata(self, images: Sequence[PosedImage]) -> dict:
        if not self.config.load_depth:
            return {}
        size = (images[0].intrinsics.width, images[0].intrinsics.height)
        folder = cache_root(self.config) / f"depth_{size[0]}x{size[1]}"
        sources = [self.config.data / image.extra["depth_file_path"] for image in images]
        targets = [folder / image.extra["depth_file_path"] for image in images]
        _write_missing(sources, targets, lambda source, target: _clean_depth(source, target, size), "Cleaning depth maps")
        # millimetres, 0 = unknown: the units and convention nifr's datamanager reads
        return {"depth_filenames": targets, "depth_unit_scale_factor": 1e-3}


def normalisation(train: PoseSet, config: BenchmarkDataParserConfig) -> Tuple[np.ndarray, float]:
    """(transform (4, 4), scale): nerfstudio's c2w = transform @ world c2w (OpenGL), translation
    times scale, from the training cameras. The transform is rounded to float32 once, so the one
    saved in dataparser_transforms.json is the one the cameras were made with."""
    c2w = T_cw_to_opengl_c2w(np.stack([image.T_cw for image in train.images]))
    # Robust to a few absurd poses: distances from the median centre, in median distances.
    distance = np.linalg.norm(c2w[:, :3, 3] - np.median(c2w[:, :3, 3], axis=0), axis=1)
    inliers = distance <= _OUTLIER_DISTANCE_FACTOR * max(float(np.median(distance)), 1e-12)
    if not inliers.all():
        names = [image.name for image, inlier in zip(train.images, inliers) if not inlier]
        CONSOLE.log(f"[yellow]{len(names)} training camera(s) far from all others, left out of the "
                    f"normalisation (still trained): {', '.join(names[:5])}")
    _, transform = camera_utils.auto_orient_and_center_poses(
        torch.from_numpy(c2w[inliers]).float(), method=config.orientation_method, center_method=config.center_method
    )
    transform = as_4x4(transform.numpy().astype(np.float64))
    scale = 1.0
    if config.auto_scale_poses:
        centres = c2w[inliers, :3, 3] @ transform[:3, :3].T + transform[:3, 3]
        scale = config.camera_extent / max(float(np.abs(centres).max()), 1e-12)
    return transform, scale


# --- resized copies ----------------------------------------------------------------------------


def cache_root(config: BenchmarkDataParserConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir is not None else Path(config.data) / "nifr_cache"


def resized(poses: PoseSet, height: int, folder: Path) -> PoseSet:
    """The set with its images resized to ``height`` (aspect kept) under ``folder`` (same names),
    written there once (again when the source is newer), and intrinsics scaled to match."""
    images, sources, targets = [], [], []
    for image in poses.images:
        k = image.intrinsics
        width = max(1, round(k.width * height / k.height))
        images.append(replace(image, intrinsics=k.scaled(width / k.width, height / k.height)))
        sources.append(poses.root / image.name)
        targets.append(folder / image.name)
    _write_missing(sources, targets, lambda source, target: _resize_image(source, target, height), "Resizing images")
    return replace(poses, images=images, root=folder)


def _write_missing(sources: List[Path], targets: List[Path], write, description: str) -> None:
    """Runs write(source, target) for each target that is missing or older than its source."""
    todo = [
        (s, t) for s, t in zip(sources, targets) if not t.is_file() or t.stat().st_mtime < s.stat().st_mtime
    ]
    if not todo:
        return
    from rich.progress import track

    # OpenCV releases the GIL while decoding, resizing and encoding: threads scale.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in track(pool.map(lambda pair: write(*pair), todo), total=len(todo), description=description):
            pass


def _atomic_imwrite(target: Path, array: np.ndarray) -> None:
    # Written beside and renamed, so an interrupted run or a concurrent reader never sees half a file.
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.stem}.{os.getpid()}.tmp.png")
    if not cv2.imwrite(str(temporary), array):
        raise OSError(f"cannot write {target}")
    os.replace(temporary, target)


def _resize_image(source: Path, target: Path, height: int) -> None:
    image = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f"cannot read image {source}")
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    _atomic_imwrite(target, cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))


def _clean_depth(source: Path, target: Path, size: Tuple[int, int]) -> None:
    """7-Scenes depth with 65535 (no measurement) set to 0, nifr's 'unknown', resized by nearest
    neighbour (averaging depths across an edge would invent surfaces)."""
    depth = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
    if depth is None or depth.dtype != np.uint16 or depth.ndim != 2:
        raise OSError(f"{source}: expected a 16-bit single-channel depth PNG")
    depth = np.where(depth == SEVENSCENES_DEPTH_INVALID, 0, depth).astype(np.uint16)
    if (depth.shape[1], depth.shape[0]) != size:
        depth = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
    _atomic_imwrite(target, depth)


# --- helpers ----------------------------------------------------------------------------------


def _records_after_header(path: Path, header_lines: int):
    """(line number, fields) of the non-blank lines after the first header_lines lines."""
    for number, fields in _records(path):
        if number > header_lines:
            yield number, fields


def _frame_key(name: str) -> str:
    """'seq1/frame00001' of '.../seq1/frame00001.png' or 'KingsCollege\\seq1\\frame00001.jpg':
    the nvm's names end in .jpg and may carry other prefixes than the split's .png names."""
    parts = name.replace("\\", "/").split("/")
    return "/".join([*parts[-2:-1], Path(parts[-1]).stem])


def _image_size(data: Path, name: str, listed_in: Path, line: int) -> Tuple[int, int]:
    path = data / name
    if not path.is_file():
        raise PoseFileError(listed_in, f"image {name!r} not found at {path}", line)
    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except OSError as error:
        raise PoseFileError(listed_in, f"cannot read image {path}: {error}", line) from None


def _centred_pinhole(size: Tuple[int, int], focal: float) -> Intrinsics:
    width, height = size
    return Intrinsics.pinhole(width, height, focal, focal, width / 2, height / 2)


def _read_4x4(path: Path) -> np.ndarray:
    """A 7-Scenes pose file: 4 lines of 4 numbers, a rigid transform."""
    rows: List[List[float]] = []
    for line, fields in _records(path):
        if len(fields) != 4 or len(rows) == 4:
            raise PoseFileError(path, "expected a 4x4 matrix: 4 lines of 4 numbers", line)
        try:
            rows.append(_numbers(fields))
        except ValueError as error:
            raise PoseFileError(path, str(error), line) from None
    if len(rows) != 4:
        raise PoseFileError(path, f"expected a 4x4 matrix, got {len(rows)} lines")
    try:
        return _rigid_transform(rows)
    except ValueError as error:
        raise PoseFileError(path, f"pose {error}") from None


def _split_set(images: List[PosedImage], data: Path, path: Path) -> PoseSet:
    if not images:
        raise PoseFileError(path, "lists no images")
    return PoseSet(images, "hloc", data)


cambridge_data = DataParserSpecification(
    config=CambridgeDataParserConfig(),
    description="Cambridge Landmarks: dataset_train.txt / dataset_test.txt, intrinsics from reconstruction.nvm.",
)
sevenscenes_data = DataParserSpecification(
    config=SevenScenesDataParserConfig(),
    description="Microsoft 7-Scenes: TrainSplit.txt / TestSplit.txt, seq-XX/frame-XXXXXX.{color,pose,depth}.",
)
