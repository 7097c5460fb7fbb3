"""The Shapes world's training recipe: the noise schedule it trains on and samples with, and its timesteps."""

import pytest
import torch

from diffusion_gym.ddim import check_scheduler_config
from diffusion_gym.shapes.train import (
    FIELD_HELP,
    TrainConfig,
    build_scheduler,
    parse_args,
    sample_training_timesteps,
)


def test_default_schedule_is_zero_terminal_snr_v_prediction_with_trailing_steps():
    scheduler = build_scheduler(TrainConfig())
    check_scheduler_config(scheduler)
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.alphas_cumprod[-1] == 0
    scheduler.set_timesteps(20)
    assert scheduler.timesteps[0] == 999 and scheduler.timesteps[-1] == 49  # starts where x_T is pure noise


def test_the_earlier_worlds_schedule_is_still_available():
    scheduler = build_scheduler(TrainConfig(prediction_type="epsilon", zero_terminal_snr=False))
    scheduler.set_timesteps(20)
    assert scheduler.config.prediction_type == "epsilon" and scheduler.alphas_cumprod[-1] > 0
    assert scheduler.timesteps[0] == 951  # "leading" spacing with steps_offset 1, as Stable Diffusion v1.5


@pytest.mark.parametrize("config", [dict(prediction_type="epsilon"), dict(prediction_type="sample")])
def test_a_schedule_that_cannot_work_is_refused(config):
    with pytest.raises(ValueError, match="prediction_type"):
        build_scheduler(TrainConfig(**config))


def test_late_timesteps_fill_the_first_part_of_the_batch():
    generator = torch.Generator().manual_seed(0)
    timesteps = sample_training_timesteps(4000, 0.25, 900, generator)
    assert timesteps.shape == (4000,) and timesteps.dtype == torch.int64
    assert bool((timesteps[:1000] >= 900).all()) and int(timesteps[:1000].max()) == 999
    # the rest is uniform over [0, 1000): about 10% of it lands at t >= 900 too
    assert 0.07 < float((timesteps[1000:] >= 900).float().mean()) < 0.13
    assert int(timesteps[1000:].min()) < 10
    assert bool((sample_training_timesteps(8, 0.0, 900, generator) >= 0).all())
    with pytest.raises(ValueError, match="late_fraction"):
        sample_training_timesteps(8, 1.5, 900)


def test_boolean_flags_parse_both_ways():
    for argv, expected in (([], True), (["--no-zero-terminal-snr"], False), (["--zero-terminal-snr"], True)):
        config, refine_only = parse_args(argv)
        assert config.zero_terminal_snr is expected and not refine_only
    assert parse_args(["--late-fraction", "0.25"])[0].late_fraction == 0.25


def test_every_training_flag_has_a_help_line(capsys):
    from dataclasses import fields

    assert set(FIELD_HELP) == {field.name for field in fields(TrainConfig)}
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines to the terminal's width
    assert "alpha_bar_T = 0" in out and "optimiser steps (default: 4000)" in out
