"""Running and loading nifr pipelines from Python: training a config, and loading a trained one.

nerfstudio's ``ns-train`` and ``eval_setup`` do the work; this module adds what our
commands need around them: a quiet in-process training run for the demo and tests, and
a loader that refuses configs of other methods with a clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Tuple

import yaml

from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline


class NotANifrModelError(ValueError):
    """A config.yml that does not describe a trained nifr model."""


def train(config: TrainerConfig) -> Path:
    """Trains ``config`` in this process (no viewer) and returns the path of its config.yml."""
    from nerfstudio.scripts.train import main as train_main

    config.vis = "tensorboard"
    config.viewer.quit_on_train_completion = True
    config.set_timestamp()
    train_main(config)
    return config.get_base_dir() / "config.yml"


def load_pipeline(
    config_path: Path, test_mode: Literal["test", "val", "inference"] = "inference"
) -> Tuple[TrainerConfig, Pipeline]:
    """Loads a trained nifr pipeline (latest checkpoint) through nerfstudio's ``eval_setup``.

    Raises:
        FileNotFoundError: no such config file.
        NotANifrModelError: the file is not a nerfstudio config, or one of another method.
    """
    from nerfstudio.utils.eval_utils import eval_setup

    from nifr_ns.model import NifrModelConfig

    config_path = Path(config_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such config file (expected .../config.yml from ns-train)")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except yaml.YAMLError as error:
        raise NotANifrModelError(f"{config_path}: not a nerfstudio config ({error})") from error
    if not isinstance(config, TrainerConfig):
        raise NotANifrModelError(f"{config_path}: not a nerfstudio config.yml")
    if not isinstance(config.pipeline.model, NifrModelConfig):
        raise NotANifrModelError(
            f"{config_path}: a '{config.method_name}' model, not a nifr model; train one with "
            "`ns-train nifr` or `ns-train nifr-small`"
        )
    config, pipeline, _, _ = eval_setup(config_path, test_mode=test_mode)
    return config, pipeline
