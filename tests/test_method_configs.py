"""The presets as ns-train builds them from the command line."""

from __future__ import annotations

import pytest
import tyro


@pytest.fixture(scope="module")
def parse():
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    return lambda *args: tyro.cli(AnnotatedBaseConfigUnion, args=list(args))


def schedules(config) -> dict:
    return {name: group["scheduler"].max_steps for name, group in config.optimizers.items()}


def test_a_longer_run_stretches_the_schedules_written_for_the_presets_length(parse) -> None:
    default = parse("nifr-small")
    assert set(schedules(default).values()) == {default.max_num_iterations}
    longer = parse("nifr-small", "--max-num-iterations", str(3 * default.max_num_iterations))
    assert set(schedules(longer).values()) == {longer.max_num_iterations}
    assert longer.pipeline.model.proposal_warmup == 3 * default.pipeline.model.proposal_warmup


def test_schedules_set_on_the_command_line_are_kept(parse) -> None:
    config = parse("nifr-small", "--max-num-iterations", "6000", "--optimizers.encoder.scheduler.max-steps", "4000",
                   "--pipeline.model.proposal-warmup", "100")
    assert schedules(config)["encoder"] == 4000 and schedules(config)["fields"] == 6000
    assert config.pipeline.model.proposal_warmup == 100
