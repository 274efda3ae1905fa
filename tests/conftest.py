"""Shared fixtures: the tiny synthetic scene and a nifr-small model trained on it (once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nifr_ns.synth import SceneInfo, SynthConfig, generate_scene

TRAIN_ITERATIONS = 300


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory: pytest.TempPathFactory) -> SceneInfo:
    return generate_scene(tmp_path_factory.mktemp("tiny") / "scene", SynthConfig(preset="tiny"))


def tiny_training_config(data: Path, output_dir: Path, iterations: int):
    """nifr-small shortened for the tiny scene."""
    from nifr_ns.method_configs import nifr_small_config

    config = nifr_small_config()
    config.pipeline.datamanager.data = data
    config.output_dir = output_dir
    config.set_iterations(iterations)
    config.steps_per_save = iterations
    config.pipeline.model.geometry_warmup_steps = iterations // 3
    return config


@pytest.fixture(scope="session")
def trained_tiny(tiny_scene: SceneInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.yml of nifr-small trained briefly on the tiny scene."""
    from nifr_ns.pipeline import train

    return train(tiny_training_config(tiny_scene.out, tmp_path_factory.mktemp("runs"), TRAIN_ITERATIONS))
