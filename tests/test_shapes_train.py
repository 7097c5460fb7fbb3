"""The Shapes world's training recipe: the noise schedule it trains on and samples with, its timesteps, its
learning-rate schedule and EMA (diffusers' own), and that the offline tooling stays out of what a run imports."""

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion_gym.ddim import check_scheduler_config
from diffusion_gym.shapes.offline.train import (
    FIELD_HELP,
    PROXY_WARMUP_STEPS,
    WARMUP_STEPS,
    TrainConfig,
    adamw_with_cosine_schedule,
    build_scheduler,
    make_ema,
    parse_args,
    sample_training_timesteps,
)

REPO = Path(__file__).resolve().parents[1]


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


# --- the learning-rate schedule and the EMA: diffusers' utilities against the project's earlier own ----------


def old_world_factor(step: int, steps: int, warmup: int = 100, floor: float = 0.1) -> float:
    """The schedule the committed world's VAE, decoder and UNet were trained on (``_cosine_schedule`` of
    ``shapes/train.py`` up to 4e39242): a warmup multiplied into a cosine over all steps, floored at 10%."""
    progress = min(step / steps, 1.0)
    return min(1.0, (step + 1) / warmup) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def old_proxy_factor(step: int, steps: int) -> float:
    """The committed proxy's schedule (``train_proxy`` up to 4e39242): warmup 50 times a cosine to 0."""
    return min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))


def learning_rates(steps: int, warmup: int) -> list[float]:
    """The learning rate of each optimiser step ``0 .. steps - 1``, for a base rate of 1."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer, schedule = adamw_with_cosine_schedule([param], 1.0, steps, warmup)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: nothing moves, the schedule advances
        schedule.step()
    return rates


@pytest.mark.parametrize(
    "stage, steps, warmup, old_factor, worst_step, worst_gap",
    [
        ("vae", TrainConfig.vae_steps, WARMUP_STEPS, old_world_factor, 899, 0.1000),
        ("decoder", TrainConfig.decoder_steps, WARMUP_STEPS, old_world_factor, 220, 0.1315),
        ("unet", TrainConfig.unet_steps, WARMUP_STEPS, old_world_factor, 3999, 0.1000),
        ("proxy", TrainConfig.proxy_steps, PROXY_WARMUP_STEPS, old_proxy_factor, 73, 0.3541),
    ],
)
def test_learning_rate_is_diffusers_cosine_with_warmup(stage, steps, warmup, old_factor, worst_step, worst_gap):
    rates = learning_rates(steps, warmup)
    # By hand: s / W during the warmup, then 0.5 (1 + cos(pi (s - W) / (N - W))).
    by_hand = [
        s / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
        for s in range(steps)
    ]
    assert rates == pytest.approx(by_hand, abs=1e-12)
    assert rates[0] == 0.0 and rates[warmup] == 1.0
    # Not the committed world's schedule: that one starts at 1/W, multiplies its warmup into a cosine that runs
    # over all steps, and (except the proxy's) ends at 10% instead of 0. The largest gap, in units of the peak:
    gaps = [new - old_factor(s, steps) for s, new in enumerate(rates)]
    worst = max(range(steps), key=lambda s: abs(gaps[s]))
    assert (worst, round(abs(gaps[worst]), 4)) == (worst_step, worst_gap), stage


@pytest.mark.parametrize("cap", [0.998, 0.6])  # the default (never reached in 4000 steps) and one that binds
def test_ema_matches_the_earlier_rule_on_a_tiny_module(cap):
    """``make_ema``'s EMAModel against the rule of ``train_unet`` up to 4e39242, on the same weights:
    ``ema <- lerp(ema, param, 1 - d_s)`` with ``d_s = min(cap, (1 + s) / (10 + s))`` after step ``s = 0, 1, ...``."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    params = list(module.parameters())
    initial = [p.detach().clone() for p in params]
    old_ema = [p.detach().clone() for p in params]
    ema = make_ema(params, cap)
    optimizer, schedule = adamw_with_cosine_schedule(params, 0.05, steps=24, warmup=3)
    inputs, targets = torch.randn(16, 3), torch.randn(16, 2)
    for step in range(24):
        loss = torch.nn.functional.mse_loss(module(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step == 0:  # learning rate 0 at the first step: the weights have not moved
            assert all(torch.equal(p, q) for p, q in zip(params, initial, strict=True))
        ema.step(params)
        with torch.no_grad():
            torch._foreach_lerp_(old_ema, params, 1 - min(cap, (1 + step) / (10 + step)))
        # Equal up to float32 rounding: EMAModel computes s - w (s - p), lerp s + w (p - s) (measured: at most
        # 3.7e-9 on weights of size ~0.5, a few units in the last place).
        for new, earlier in zip(ema.shadow_params, old_ema, strict=True):
            torch.testing.assert_close(new, earlier, rtol=1e-6, atol=1e-8)
    assert max(float((p.detach() - q).abs().max()) for p, q in zip(params, initial, strict=True)) > 0.05  # trained
    # The decays themselves: equal from the second step on; EMAModel's first is 0 (a copy) where the old rule
    # had 0.1, which the zero learning rate of the first step makes the same thing.
    decays = [ema.get_decay(k) for k in range(1, 25)]
    assert decays[0] == 0.0 and decays[1:] == [min(cap, (1 + s) / (10 + s)) for s in range(1, 24)]
    ema.copy_to(params)
    assert all(torch.equal(p, e) for p, e in zip(params, ema.shadow_params, strict=True))


def _offline_imports(path: Path) -> list[str]:
    """The ``diffusion_gym.shapes.offline`` modules that the file at ``path`` imports, anywhere in it."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return [n for n in names if n.startswith("diffusion_gym.shapes.offline")]


def test_nothing_a_run_imports_imports_the_offline_tooling():
    offline = REPO / "diffusion_gym" / "shapes" / "offline"
    sources = [p for folder in ("diffusion_gym", "agents") for p in (REPO / folder).rglob("*.py")]
    found = {str(p.relative_to(REPO)): _offline_imports(p) for p in sources if offline not in p.parents}
    assert len(found) > 20 and not {path: names for path, names in found.items() if names}
    # and at run time, in a fresh process: the env, its rewards (the world's proxy too) and the agents
    code = (
        "import sys, gymnasium as gym, diffusion_gym, diffusion_gym.core, diffusion_gym.rewards, agents;"
        "env = gym.make('DiffusionT2I-v1', num_inference_steps=2); env.reset(seed=0);"
        "diffusion_gym.rewards.make_reward('shapes-clip', 'cpu');"
        "loaded = [m for m in sys.modules if m.startswith('diffusion_gym.shapes.offline')]; assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
