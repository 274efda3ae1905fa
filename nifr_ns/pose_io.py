"""Pose and camera files, and the mapping between the user's world frame and nerfstudio's.

Owns the two pose-file forms of DESIGN.md ("Conventions") and their validation:
- nerfstudio ``transforms.json``: camera-to-world OpenGL ``transform_matrix`` and ``file_path``
  per frame, intrinsics shared at top level or per frame;
- hloc/COLMAP text: ``name qw qx qy qz tx ty tz`` (world-to-camera, OpenCV axes) with an
  intrinsics file ``name MODEL width height params...``;
and ``DataparserTransform``, the similarity nerfstudio's dataparser applied to the poses.
In memory every pose is a ``T_cw`` (world-to-camera 4x4 float64, OpenCV axes).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import json.decoder
import json.scanner
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nifr_ns.geometry import (
    T_cw_to_opengl_c2w,
    as_4x4,
    matrix_to_quaternion,
    nearest_rotation,
    opengl_c2w_to_T_cw,
    quaternion_to_matrix,
)

# COLMAP camera models and their parameters, in COLMAP's order. "f" is a focal length shared
# by x and y; SIMPLE_RADIAL's single radial term (COLMAP's "k") is named k1 here.
CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "OPENCV_FISHEYE": ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"),
}
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")  # nerfstudio's names and distortion_params order
# The model a single-focal model becomes when x and y are scaled differently.
_TWO_FOCAL_MODEL = {"SIMPLE_PINHOLE": "PINHOLE", "SIMPLE_RADIAL": "OPENCV", "RADIAL": "OPENCV"}
# nerfstudio's camera_model values that are plain perspective cameras.
_PERSPECTIVE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")

_TRANSFORMS_INTRINSICS_KEYS = {
    *("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model", "distortion_params"),
    *DISTORTION_KEYS,
}
_FRAME_POSE_KEYS = {"file_path", "transform_matrix"}

# The applied_transform nerfstudio assumes for COLMAP data processed before it wrote that key
# (nerfstudio_dataparser.py).
_NERFSTUDIO_COLMAP_APPLIED_TRANSFORM = [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]]

_RIGID_TOLERANCE = 1e-3
_QUATERNION_NORM_TOLERANCE = 1e-3


class PoseFileError(ValueError):
    """A malformed pose/intrinsics file; str() is 'path:line: message' (or 'path: message' without line)."""

    def __init__(self, path: Path | str, message: str, line: int | None = None):
        self.path, self.message, self.line = Path(path), message, line
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")


@dataclass(frozen=True)
class Intrinsics:
    """A camera's intrinsics as a COLMAP model; validated on construction (ValueError)."""

    model: str
    width: int
    height: int
    params: tuple[float, ...]  # COLMAP order for the model (CAMERA_MODELS)

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODELS:
            raise ValueError(f"unknown camera model {self.model!r}; known: {', '.join(CAMERA_MODELS)}")
        names = CAMERA_MODELS[self.model]
        if len(self.params) != len(names):
            raise ValueError(f"{self.model} takes {len(names)} parameters ({' '.join(names)}), got {len(self.params)}")
        object.__setattr__(self, "params", tuple(float(p) for p in self.params))
        if not all(math.isfinite(p) for p in self.params):
            raise ValueError("camera parameters must be finite")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError("focal lengths must be positive")

    @classmethod
    def pinhole(cls, width: int, height: int, fx: float, fy: float, cx: float, cy: float) -> Intrinsics:
        return cls("PINHOLE", width, height, (fx, fy, cx, cy))

    @classmethod
    def from_named(cls, model: str, width: int, height: int, values: dict[str, float]) -> Intrinsics:
        """Inverse of named(): distortion terms default to 0; single-focal models take fx."""
        params = tuple(values["fx"] if name == "f" else values.get(name, 0.0) for name in CAMERA_MODELS[model])
        return cls(model, width, height, params)

    def named(self) -> dict[str, float]:
        """Parameters by name: fx, fy, cx, cy and the model's distortion terms (DISTORTION_KEYS)."""
        values = dict(zip(CAMERA_MODELS[self.model], self.params))
        if "f" in values:
            values["fx"] = values["fy"] = values.pop("f")
        return values

    @property
    def fx(self) -> float:
        return self.named()["fx"]

    @property
    def fy(self) -> float:
        return self.named()["fy"]

    @property
    def cx(self) -> float:
        return self.named()["cx"]

    @property
    def cy(self) -> float:
        return self.named()["cy"]

    @property
    def distortion(self) -> dict[str, float]:
        """The model's distortion terms by nerfstudio name (empty for pinhole models)."""
        return {k: v for k, v in self.named().items() if k in DISTORTION_KEYS}

    def K(self) -> np.ndarray:
        """Pinhole matrix (3, 3); distortion is not part of it."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, sx: float, sy: float) -> Intrinsics:
        """The intrinsics of the image resized by (sx, sy); distortion terms are unit-free."""
        values = self.named()
        values.update(fx=values["fx"] * sx, fy=values["fy"] * sy, cx=values["cx"] * sx, cy=values["cy"] * sy)
        model = self.model if sx == sy else _TWO_FOCAL_MODEL.get(self.model, self.model)
        return Intrinsics.from_named(model, round(self.width * sx), round(self.height * sy), values)


@dataclass
class PosedImage:
    name: str  # image path as written in the file (relative to PoseSet.root)
    T_cw: np.ndarray  # (4, 4) float64 world-to-camera, OpenCV axes
    intrinsics: Intrinsics
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of a transforms.json frame, kept on write


@dataclass
class PoseSet:
    """Posed images read from (or to be written to) one pose file. Treat it as immutable:
    derive changed sets with with_poses()."""

    images: list[PosedImage]
    form: Literal["transforms", "hloc"]
    root: Path  # folder image names are relative to
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level keys of a transforms.json, kept on write

    def __post_init__(self) -> None:
        if len(self._by_name) != len(self.images):
            raise ValueError("image names in a PoseSet must be unique")

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[PosedImage]:
        return iter(self.images)

    @property
    def names(self) -> list[str]:
        return [image.name for image in self.images]

    @cached_property
    def _by_name(self) -> dict[str, PosedImage]:
        return {image.name: image for image in self.images}

    def by_name(self, name: str) -> PosedImage:
        """The image called name; KeyError if there is none."""
        return self._by_name[name]

    def with_poses(self, poses: dict[str, np.ndarray]) -> PoseSet:
        """A copy with the T_cw (4, 4) of the named images replaced; KeyError for an unknown name."""
        unknown = set(poses) - set(self._by_name)
        if unknown:
            raise KeyError(f"no image called {sorted(unknown)[0]!r}")
        images = [
            dataclasses.replace(image, T_cw=np.array(poses[image.name], dtype=np.float64))
            if image.name in poses
            else image
            for image in self.images
        ]
        return dataclasses.replace(self, images=images)


# --- reading and writing -----------------------------------------------------------------


def read_poses(path: Path | str, intrinsics: Path | str | None = None, image_root: Path | str | None = None) -> PoseSet:
    """A pose file in either form: '.json' is a transforms.json, anything else hloc text, which
    needs its intrinsics file. image_root overrides the folder image names are relative to."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_transforms(path, image_root)
    if intrinsics is None:
        raise PoseFileError(path, "an hloc poses file needs its intrinsics file ('name MODEL width height params...')")
    return read_hloc(path, intrinsics, image_root)


def write_poses(poses: PoseSet, path: Path | str, intrinsics: Path | str | None = None) -> None:
    """Writes poses in the form they were read in; for hloc, also the intrinsics file when given
    (a transforms.json holds its intrinsics, so intrinsics is then unused)."""
    if poses.form == "transforms":
        write_transforms(poses, path)
    else:
        write_hloc(poses, path, intrinsics)


def read_transforms(path: Path | str, image_root: Path | str | None = None) -> PoseSet:
    """A nerfstudio transforms.json; image names are relative to its folder unless image_root is given."""
    path = Path(path)
    meta, object_lines = _load_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise PoseFileError(path, "expected a JSON object with a 'frames' list")
    images: list[PosedImage] = []
    first_line: dict[str, int | None] = {}
    for index, frame in enumerate(meta["frames"]):
        line = object_lines.get(id(frame))
        if not isinstance(frame, dict):
            raise PoseFileError(path, f"frame {index} is not a JSON object", line)
        missing = [key for key in ("file_path", "transform_matrix") if key not in frame]
        if missing:
            raise PoseFileError(path, f"frame {index} has no '{missing[0]}'", line)
        name = str(frame["file_path"])
        if name in first_line:
            raise PoseFileError(path, f"duplicate file_path {name!r} (first at line {first_line[name]})", line)
        first_line[name] = line
        try:
            T_cw = opengl_c2w_to_T_cw(_rigid_transform(frame["transform_matrix"]))
        except ValueError as error:
            raise PoseFileError(path, f"frame {name!r}: transform_matrix {error}", line) from None
        try:
            intrinsics = _transforms_intrinsics(meta, frame)
        except ValueError as error:
            raise PoseFileError(path, f"frame {name!r}: {error}", line) from None
        extra = {k: v for k, v in frame.items() if k not in _FRAME_POSE_KEYS | _TRANSFORMS_INTRINSICS_KEYS}
        images.append(PosedImage(name, T_cw, intrinsics, extra))
    extra = {k: v for k, v in meta.items() if k != "frames" and k not in _TRANSFORMS_INTRINSICS_KEYS}
    return PoseSet(images, "transforms", Path(image_root) if image_root is not None else path.parent, extra)


def write_transforms(poses: PoseSet, path: Path | str, extra: dict[str, Any] | None = None) -> None:
    """Writes a transforms.json; intrinsics go at top level when all images share them, else per
    frame. Keys kept from the file the poses were read from, then extra, are added at top level."""
    fisheye = {image.intrinsics.model == "OPENCV_FISHEYE" for image in poses}
    if len(fisheye) > 1:
        raise ValueError("a transforms.json has one camera_model: cannot mix fisheye and perspective images")
    shared = {image.intrinsics for image in poses}
    meta: dict[str, Any] = {**poses.extra, **(extra or {})}
    meta["camera_model"] = "OPENCV_FISHEYE" if fisheye == {True} else "OPENCV"
    if len(shared) == 1:
        meta.update(_transforms_intrinsics_keys(next(iter(shared))))
    meta["frames"] = [
        {
            "file_path": image.name,
            "transform_matrix": T_cw_to_opengl_c2w(image.T_cw).tolist(),
            **({} if len(shared) == 1 else _transforms_intrinsics_keys(image.intrinsics)),
            **image.extra,
        }
        for image in poses
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2) + "\n")


def read_hloc(
    poses_path: Path | str, intrinsics_path: Path | str | Mapping[str, Intrinsics], image_root: Path | str | None = None
) -> PoseSet:
    """hloc/COLMAP text poses with their intrinsics file, or with the intrinsics of the images they
    may name (e.g. a benchmark split's); image names are relative to image_root (default: the
    poses file's folder)."""
    poses_path = Path(poses_path)
    if isinstance(intrinsics_path, Mapping):
        cameras = dict(intrinsics_path)
        example = next(iter(cameras), "")
        unknown = f"is not one of the {len(cameras)} images this file may name (such as {example!r})"
    else:
        intrinsics_path = Path(intrinsics_path)
        cameras = _read_hloc_intrinsics(intrinsics_path)
        unknown = f"has no intrinsics in {intrinsics_path}"

    images: list[PosedImage] = []
    for line, name, values in _named_records(poses_path, _records(poses_path), "name qw qx qy qz tx ty tz"):
        q, t = np.array(values[:4]), np.array(values[4:])
        if abs(np.linalg.norm(q) - 1) > _QUATERNION_NORM_TOLERANCE:
            raise PoseFileError(poses_path, f"quaternion norm is {np.linalg.norm(q):.6g}, not 1", line)
        if name not in cameras:
            raise PoseFileError(poses_path, f"{name!r} {unknown}", line)
        T_cw = np.eye(4)
        T_cw[:3, :3], T_cw[:3, 3] = quaternion_to_matrix(q), t
        images.append(PosedImage(name, T_cw, cameras[name]))
    return PoseSet(images, "hloc", Path(image_root) if image_root is not None else poses_path.parent)


def _read_hloc_intrinsics(intrinsics_path: Path) -> dict[str, Intrinsics]:
    """An intrinsics file 'name MODEL width height params...' by name."""
    cameras: dict[str, Intrinsics] = {}
    for line, fields in _records(intrinsics_path):
        if len(fields) < 4:
            raise PoseFileError(intrinsics_path, "expected 'name MODEL width height params...'", line)
        name, model, width, height = fields[:4]
        if name in cameras:
            raise PoseFileError(intrinsics_path, f"duplicate name {name!r}", line)
        try:
            cameras[name] = Intrinsics(model, _integer(width), _integer(height), tuple(_numbers(fields[4:])))
        except ValueError as error:
            raise PoseFileError(intrinsics_path, str(error), line) from None
    return cameras


def write_hloc(poses: PoseSet, poses_path: Path | str, intrinsics_path: Path | str | None = None) -> None:
    """Writes 'name qw qx qy qz tx ty tz' lines and, when intrinsics_path is given,
    'name MODEL width height params...' lines."""
    for image in poses:
        if len(image.name.split()) != 1:
            raise ValueError(f"hloc text cannot hold the image name {image.name!r} (empty or with whitespace)")
    pose_lines = ["# name qw qx qy qz tx ty tz (world-to-camera, OpenCV axes)"]
    for image in poses:
        values = [*matrix_to_quaternion(image.T_cw[:3, :3]), *image.T_cw[:3, 3]]
        pose_lines.append(" ".join([image.name, *(repr(float(v)) for v in values)]))
    _write_lines(Path(poses_path), pose_lines)
    if intrinsics_path is not None:
        camera_lines = ["# name MODEL width height params..."]
        for image in poses:
            camera = image.intrinsics
            params = " ".join(repr(p) for p in camera.params)
            camera_lines.append(f"{image.name} {camera.model} {camera.width} {camera.height} {params}")
        _write_lines(Path(intrinsics_path), camera_lines)


# --- nerfstudio's frame ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DataparserTransform:
    """The similarity nerfstudio applied to the user's poses (dataparser_transforms.json):
    c2w_ns = transform @ c2w_world (as 4x4), then the translation is multiplied by scale."""

    transform: np.ndarray  # (3, 4)
    scale: float

    @classmethod
    def identity(cls) -> DataparserTransform:
        return cls(np.eye(4)[:3], 1.0)

    @classmethod
    def load(cls, path: Path | str, data: Path | str | None = None) -> DataparserTransform:
        """Reads a dataparser_transforms.json (PoseFileError on a bad file).

        nerfstudio's file maps the frame before the dataset's ``applied_transform`` and
        ``applied_scale`` (for data from ns-process-data: COLMAP's frame). Pass ``data``, the
        nerfstudio dataparser's ``data`` (a folder or a transforms.json), to get the mapping from
        the poses as written in that transforms.json instead.
        """
        path = Path(path)
        meta, _ = _load_json(path)
        try:
            transform, scale = as_4x4(meta["transform"])[:3], float(meta["scale"])
        except (KeyError, TypeError, ValueError):
            raise PoseFileError(path, "expected {'transform': 3x4 matrix, 'scale': number}") from None
        if not (np.isfinite(transform).all() and math.isfinite(scale) and scale > 0):
            raise PoseFileError(path, "transform must be finite and scale finite and positive")
        if data is None:
            return cls(transform, scale)
        applied, applied_scale = _nerfstudio_applied_transform(Path(data))
        return cls((as_4x4(transform) @ np.linalg.inv(applied))[:3], scale / applied_scale)

    def _matrix(self) -> np.ndarray:
        return as_4x4(self.transform)

    def c2w_to_nerfstudio(self, c2w_gl_world: np.ndarray) -> np.ndarray:
        """Camera-to-world (..., 4, 4) or (..., 3, 4) in the world frame -> (..., 4, 4) in nerfstudio's."""
        c2w = self._matrix() @ as_4x4(c2w_gl_world)
        c2w[..., :3, 3] *= self.scale
        return c2w

    def c2w_to_world(self, c2w_gl_ns: np.ndarray) -> np.ndarray:
        """Camera-to-world (..., 4, 4) or (..., 3, 4) in nerfstudio's frame -> (..., 4, 4) in the world frame."""
        c2w = as_4x4(c2w_gl_ns)
        c2w[..., :3, 3] /= self.scale
        return np.linalg.inv(self._matrix()) @ c2w

    def points_to_nerfstudio(self, X: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> nerfstudio frame (N, 3)."""
        return self.scale * (np.asarray(X) @ self.transform[:, :3].T + self.transform[:, 3])

    def points_to_world(self, X: np.ndarray) -> np.ndarray:
        """nerfstudio-frame points (N, 3) -> world frame (N, 3)."""
        return (np.asarray(X) / self.scale - self.transform[:, 3]) @ np.linalg.inv(self.transform[:, :3]).T

    def T_cw_to_nerfstudio_c2w(self, T_cw: np.ndarray) -> np.ndarray:
        """World T_cw (..., 4, 4) -> camera-to-world (..., 4, 4), OpenGL axes, nerfstudio frame."""
        return self.c2w_to_nerfstudio(T_cw_to_opengl_c2w(T_cw))

    def nerfstudio_c2w_to_T_cw(self, c2w_gl_ns: np.ndarray) -> np.ndarray:
        """Camera-to-world (..., 4, 4) or (..., 3, 4), OpenGL axes, nerfstudio frame -> world T_cw (..., 4, 4)."""
        return opengl_c2w_to_T_cw(self.c2w_to_world(c2w_gl_ns))


def _nerfstudio_applied_transform(data: Path) -> tuple[np.ndarray, float]:
    """(applied_transform (4, 4), applied_scale) nerfstudio's dataparser takes from its data,
    following nerfstudio_dataparser.py, including its fallback for older COLMAP datasets."""
    transforms_path = data if data.suffix == ".json" else data / "transforms.json"
    meta, _ = _load_json(transforms_path)
    if "applied_transform" in meta:
        applied = meta["applied_transform"]
    elif (data / "colmap/sparse/0").exists():
        applied = _NERFSTUDIO_COLMAP_APPLIED_TRANSFORM
    else:
        applied = np.eye(4)
    try:
        return as_4x4(applied), float(meta.get("applied_scale", 1.0))
    except (TypeError, ValueError):
        raise PoseFileError(transforms_path, "applied_transform must be a 3x4 matrix, applied_scale a number") from None


# --- helpers ----------------------------------------------------------------------------------


def _load_json(path: Path) -> tuple[Any, dict[int, int]]:
    """The parsed file and, keyed by id() of each parsed object, the line where it starts."""
    try:
        text = path.read_text()
    except OSError as error:
        raise PoseFileError(path, f"cannot read: {error.strerror or error}") from None
    newlines = [i for i, char in enumerate(text) if char == "\n"]
    object_lines: dict[int, int] = {}

    def parse_object(string_and_start: tuple[str, int], *args: Any) -> tuple[dict, int]:
        obj, end = json.decoder.JSONObject(string_and_start, *args)
        object_lines[id(obj)] = bisect.bisect_left(newlines, string_and_start[1]) + 1
        return obj, end

    # The standard decoder with a hook on objects, so errors can name the line of a frame.
    decoder = json.JSONDecoder()
    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        return decoder.decode(text), object_lines
    except json.JSONDecodeError as error:
        raise PoseFileError(path, f"invalid JSON: {error.msg} (column {error.colno})", error.lineno) from None


def _rigid_transform(values: Any) -> np.ndarray:
    """A (4, 4) rigid transform from nested lists, its rotation snapped to the nearest one;
    ValueError saying what is wrong."""
    try:
        M = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("must be a 4x4 matrix of numbers") from None
    if M.shape != (4, 4):
        raise ValueError(f"must be 4x4, got shape {M.shape}")
    if not np.isfinite(M).all():
        raise ValueError("has NaN or infinite values")
    R = M[:3, :3]
    if (
        np.abs(R @ R.T - np.eye(3)).max() > _RIGID_TOLERANCE
        or abs(np.linalg.det(R) - 1) > _RIGID_TOLERANCE
        or np.abs(M[3] - [0, 0, 0, 1]).max() > _RIGID_TOLERANCE
    ):
        raise ValueError(f"is not rigid (rotation orthonormal with det 1, last row 0 0 0 1, within {_RIGID_TOLERANCE})")
    M[:3, :3] = nearest_rotation(R)
    M[3] = [0, 0, 0, 1]
    return M


def _transforms_intrinsics(meta: dict[str, Any], frame: dict[str, Any]) -> Intrinsics:
    """One frame's intrinsics; ValueError naming what is missing or wrong."""

    # nerfstudio's rule (nerfstudio_dataparser.py): a key at top level wins over the frame's.
    def number(key: str) -> float:
        source = meta if key in meta else frame
        if key not in source:
            raise ValueError(f"missing intrinsics key '{key}' (neither in the frame nor at top level)")
        try:
            return float(source[key])
        except (TypeError, ValueError):
            raise ValueError(f"intrinsics key '{key}' is not a number: {source[key]!r}") from None

    source = meta if any(key in meta for key in (*DISTORTION_KEYS, "distortion_params")) else frame
    if "distortion_params" in source:
        terms = source["distortion_params"]
        if not isinstance(terms, list) or len(terms) != 6:
            raise ValueError("distortion_params must be a list of 6 numbers (k1 k2 k3 k4 p1 p2)")
    else:
        terms = [source.get(key, 0.0) for key in DISTORTION_KEYS]
    distortion = dict(zip(DISTORTION_KEYS, _numbers(terms)))
    camera_model = meta.get("camera_model", "OPENCV")
    if camera_model == "OPENCV_FISHEYE":
        model = "OPENCV_FISHEYE"
    elif camera_model in _PERSPECTIVE_MODELS:
        if distortion["k3"] or distortion["k4"]:
            raise ValueError("k3/k4 on a perspective camera have no COLMAP model")
        model = "OPENCV" if any(distortion[key] for key in ("k1", "k2", "p1", "p2")) else "PINHOLE"
    else:
        raise ValueError(f"unsupported camera_model {camera_model!r}")
    named = {"fx": number("fl_x"), "fy": number("fl_y"), "cx": number("cx"), "cy": number("cy"), **distortion}
    return Intrinsics.from_named(model, int(number("w")), int(number("h")), named)


def _transforms_intrinsics_keys(intrinsics: Intrinsics) -> dict[str, Any]:
    return {
        "w": intrinsics.width,
        "h": intrinsics.height,
        "fl_x": intrinsics.fx,
        "fl_y": intrinsics.fy,
        "cx": intrinsics.cx,
        "cy": intrinsics.cy,
        **intrinsics.distortion,
    }


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, whitespace-separated fields) of each line that is not blank or a # comment."""
    try:
        text = path.read_text()
    except OSError as error:
        raise PoseFileError(path, f"cannot read: {error.strerror or error}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            yield number, fields


def _named_records(
    path: Path, records: Iterable[tuple[int, list[str]]], columns: str
) -> Iterator[tuple[int, str, list[float]]]:
    """(line, name, numbers) of records 'name number...' with the columns named in ``columns``,
    each name once; PoseFileError naming the line of a wrong column count, a repeated name or a
    value that is not a finite number."""
    expected = len(columns.split())
    first_line: dict[str, int] = {}
    for line, fields in records:
        if len(fields) != expected:
            raise PoseFileError(path, f"expected {expected} columns '{columns}', got {len(fields)}", line)
        name = fields[0]
        if name in first_line:
            raise PoseFileError(path, f"duplicate name {name!r} (first at line {first_line[name]})", line)
        first_line[name] = line
        try:
            values = _numbers(fields[1:])
        except ValueError as error:
            raise PoseFileError(path, str(error), line) from None
        yield line, name, values


def _numbers(fields: list[Any]) -> list[float]:
    """Finite floats from fields; ValueError naming the first bad one."""
    values = []
    for f in fields:
        try:
            value = float(f)
        except (TypeError, ValueError):
            raise ValueError(f"not a number: {f!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {f!r}")
        values.append(value)
    return values


def _integer(field: str) -> int:
    try:
        return int(field)
    except ValueError:
        raise ValueError(f"image size must be an integer, got {field!r}") from None


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
