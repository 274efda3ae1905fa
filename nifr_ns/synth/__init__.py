"""The embedded procedural scenes: exactly ray-cast, textured, lit places with their views and queries.

They are the ground truth of the demo, the tests and the benchmarks: geometry, depth and poses
are exact, so every error measured on them belongs to the method. ``scenes`` builds the places
(a bright room, a dark room, a tiled hall, a street facade under open sky), ``render`` casts rays
into them, ``views`` places cameras and grades queries (appearance, moved light, another camera,
occluders), ``writer`` writes a scene or the suite of them to disk.
"""

from nifr_ns.synth.render import render_view
from nifr_ns.synth.scenes import ROOM_SIZE, SCENE_NAMES, Scene, build_scene
from nifr_ns.synth.views import GRADE_TOKENS, OTHER_CAMERAS, Grade, grade_appearance
from nifr_ns.synth.writer import (
    DEPTH_UNIT_SCALE_FACTOR,
    SUITE_GRADES,
    SceneInfo,
    SynthConfig,
    generate_scene,
    generate_suite,
    scene_intrinsics,
)

__all__ = [
    "DEPTH_UNIT_SCALE_FACTOR", "GRADE_TOKENS", "OTHER_CAMERAS", "ROOM_SIZE", "SCENE_NAMES", "SUITE_GRADES", "Grade",
    "Scene", "SceneInfo", "SynthConfig", "build_scene", "generate_scene", "generate_suite", "grade_appearance",
    "render_view", "scene_intrinsics",
]  # fmt: skip
