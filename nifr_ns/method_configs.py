"""The ``nifr`` (GPU) and ``nifr-small`` (2-core CPU) methods, registered with nerfstudio.

nerfstudio imports this module for every ``ns-*`` command, so it only builds configs.
"""

from __future__ import annotations

from dataclasses import dataclass

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from nifr_ns.datamanager import NifrDataManagerConfig
from nifr_ns.field import EncodingConfig
from nifr_ns.model import NifrModelConfig


@dataclass
class NifrTrainerConfig(TrainerConfig):
    """nerfstudio's trainer settings, with schedules that follow ``--max-num-iterations``.

    The presets write each learning-rate schedule over the whole run and nifr-small's proposal
    warm-up over its first half. With nerfstudio's own TrainerConfig, ``--max-num-iterations 6000``
    alone leaves them at nifr-small's 2000: the encoder would spend two thirds of the run at its
    final learning rate."""

    schedule_iterations: int = 0
    """The run length the schedules are written for (0: none). When ``max_num_iterations`` differs,
    the schedulers whose ``max_steps`` is this length and a proposal warm-up of half of it are
    stretched to the new length; values set to anything else (on the command line) are kept."""

    def __post_init__(self) -> None:
        # tyro builds the config from the command line through __init__, so this sees the final values
        self.set_iterations(self.max_num_iterations)

    def set_iterations(self, iterations: int) -> None:
        """Sets the run's length, stretching the schedules written for the previous one."""
        old = self.schedule_iterations
        if old and iterations != old:
            for group in self.optimizers.values():
                scheduler = group.get("scheduler")
                if scheduler is not None and getattr(scheduler, "max_steps", None) == old:
                    scheduler.max_steps = iterations
            model = self.pipeline.model
            if getattr(model, "proposal_warmup", None) == old // 2:
                model.proposal_warmup = iterations // 2
        self.max_num_iterations = self.schedule_iterations = iterations


def _group(lr: float, lr_final: float, max_steps: int) -> dict:
    return {
        "optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
        "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=max_steps),
    }


def _optimizers(max_steps: int) -> dict:
    return {
        "proposal_networks": _group(1e-2, 1e-4, max_steps),
        "fields": _group(1e-2, 1e-4, max_steps),
        "encoder": _group(1e-3, 1e-5, max_steps),
    }


def _small_optimizers(max_steps: int) -> dict:
    """nifr-small's learning rates: still learning at the end of its short run (decaying every
    group 100x left the last half of its 2000 iterations barely moving).
    """
    return {
        "proposal_networks": _group(1e-2, 1e-2, max_steps),
        "fields": _group(1e-2, 1e-2, max_steps),
        "encoder": _group(3e-3, 3e-4, max_steps),
    }


def nifr_config() -> NifrTrainerConfig:
    """Full settings for a GPU (tinycudann hash grids when installed)."""
    return NifrTrainerConfig(
        method_name="nifr",
        steps_per_eval_batch=500,
        steps_per_save=2000,
        max_num_iterations=30000,
        schedule_iterations=30000,
        mixed_precision=True,
        pipeline=VanillaPipelineConfig(
            datamanager=NifrDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(),
                train_num_rays_per_batch=4096,
                eval_num_rays_per_batch=4096,
            ),
            model=NifrModelConfig(eval_num_rays_per_chunk=1 << 15, average_init_density=0.01),
        ),
        optimizers=_optimizers(30000),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


def nifr_small_config() -> NifrTrainerConfig:
    """A preset that trains a usable model on a 2-core CPU in minutes.

    Tri-plane encodings instead of the pure-torch hash grid, one proposal network, few samples per
    ray, small images in memory, three images per batch (the encoder is a third of a step on a CPU)
    and a total-variation prior on the density tri-planes. A random background colour during
    training makes every ray end on a surface, as it does in a room or around an object (with
    nerfacto's "last_sample" background the room's walls were painted on a shell far beyond them).
    For outdoor scenes with sky use ``nifr`` or ``--pipeline.model.background-color last_sample``.
    2000 iterations keep the demo near ten minutes; where the time is there, train longer
    (``--max-num-iterations``; the schedules follow): the renders' sharpness is what limits
    refinement most.
    """
    iters = 2000
    triplane = EncodingConfig(kind="triplane", resolutions=(64, 128, 256), features_per_level=8)
    return NifrTrainerConfig(
        method_name="nifr-small",
        steps_per_eval_batch=500,
        steps_per_eval_image=1000,
        steps_per_save=1000,
        max_num_iterations=iters,
        schedule_iterations=iters,
        mixed_precision=False,
        machine=MachineConfig(device_type="cpu"),
        pipeline=VanillaPipelineConfig(
            datamanager=NifrDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(),
                train_num_rays_per_batch=1024,
                eval_num_rays_per_batch=1024,
                images_per_batch=3,
            ),
            model=NifrModelConfig(
                eval_num_rays_per_chunk=4096,
                plane_tv_loss_mult=1e-3,
                average_init_density=0.01,
                background_color="random",
                implementation="torch",
                density_encoding=triplane,
                feature_encoding=EncodingConfig(kind="triplane", resolutions=(32, 64, 128), features_per_level=8),
                proposal_encodings=(EncodingConfig(kind="triplane", resolutions=(32, 64), features_per_level=4),),
                num_proposal_iterations=1,
                num_proposal_samples_per_ray=(48,),
                num_nerf_samples_per_ray=24,
                proposal_warmup=iters // 2,
                hidden_dim=32,
                hidden_dim_color=32,
                appearance_embed_dim=8,
            ),
        ),
        optimizers=_small_optimizers(iters),
        viewer=ViewerConfig(num_rays_per_chunk=4096),
        vis="viewer",
    )


nifr = MethodSpecification(config=nifr_config(), description="Neural implicit feature fields for pose refinement.")
nifr_small = MethodSpecification(
    config=nifr_small_config(), description="nifr preset for a 2-core CPU: trains in minutes."
)
