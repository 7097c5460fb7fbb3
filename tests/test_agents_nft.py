r"""NFT (``agents/algorithms/nft.py``): its math by hand, the direction of one update, end-to-end runs (LoRA and full
fine-tuning, both samplers, the soft-updated old policy) and an exact resume from a checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import pytest
import torch

from agents import AgentConfig, Trainer, make_agent
from agents.algorithms.buffers import Trajectories
from agents.algorithms.math import nft_loss, optimality_probabilities, stratified_timesteps
from agents.envs import TINY_LATENT_BOUND, TINY_PROMPTS, TINY_REWARD, EnvConfig
from agents.training.run_folder import read_history

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------ the math, by hand
def one_dim(value: float) -> torch.Tensor:
    return torch.tensor([value]).reshape(1, 1, 1, 1)  # (B=1, C, H, W)


def test_nft_loss_by_hand():
    r"""One latent dim, :math:`f_\theta = 2`, :math:`f_{old} = 1`, :math:`y = 0`, :math:`\beta = 0.5`:
    :math:`f^+ = 0.5 \cdot 1 + 0.5 \cdot 2 = 1.5` (error 2.25), :math:`f^- = 1.5 \cdot 1 - 0.5 \cdot 2 = 0.5`
    (error 0.25).
    At :math:`r = 1` the loss is 2.25, at :math:`r = 0` 0.25, at :math:`r = 0.25` :math:`0.5625 + 0.1875 = 0.75`, and
    its gradient in :math:`f_\theta`, :math:`2\beta(r(f^+ - y) - (1 - r)(f^- - y)) = 0.375 - 0.375 = 0`.

    Catches: :math:`\pm\beta` swapped between the two policies, :math:`r` and :math:`1 - r` swapped, the old
    prediction not detached (its gradient would flow), a sum in place of the mean over dims (the 2-dim case)."""
    prediction = one_dim(2.0).requires_grad_(True)
    old = one_dim(1.0).requires_grad_(True)
    target = one_dim(0.0)
    for r, expected in [(1.0, 2.25), (0.0, 0.25), (0.25, 0.75)]:
        loss, positive, negative = nft_loss(prediction, old, target, torch.tensor([r]), 0.5)
        torch.testing.assert_close(loss, torch.tensor(expected))
        torch.testing.assert_close((positive, negative), (torch.tensor([2.25]), torch.tensor([0.25])))
    loss, _, _ = nft_loss(prediction, old, target, torch.tensor([0.25]), 0.5)
    loss.backward()
    torch.testing.assert_close(prediction.grad, one_dim(0.0))
    assert old.grad is None
    # two samples, two dims each: errors averaged over dims, the loss averaged over samples
    prediction = torch.tensor([[1.0, 3.0], [0.0, 0.0]]).reshape(2, 2, 1, 1)
    old = torch.zeros(2, 2, 1, 1)
    target = torch.tensor([[1.0, 1.0], [1.0, 1.0]]).reshape(2, 2, 1, 1)
    # beta 1: f+ = f_theta, f- = -f_theta. Sample 0: + errors (0, 4) -> 2; - errors (4, 16) -> 10. Sample 1: 1 and 1.
    loss, positive, negative = nft_loss(prediction, old, target, torch.tensor([1.0, 0.5]), 1.0)
    torch.testing.assert_close((positive, negative), (torch.tensor([2.0, 1.0]), torch.tensor([10.0, 1.0])))
    torch.testing.assert_close(loss, torch.tensor((2.0 + 1.0) / 2))


def test_nft_loss_gradient_at_the_old_policy_points_by_two_r_minus_one():
    r"""At :math:`f_\theta = f_{old}` the gradient is :math:`2\beta(2r - 1)(f_{old} - y) / (B \cdot d)`: with
    :math:`f_{old} - y = 1`, :math:`\beta = 2`, :math:`B = 2`, :math:`d = 1`, rows r = 1 and r = 0 get +2 and -2
    (descent moves the first toward the target and the second away)."""
    prediction = torch.ones(2, 1, 1, 1, requires_grad=True)
    loss, _, _ = nft_loss(prediction, torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1), torch.tensor([1.0, 0.0]), 2.0)
    loss.backward()
    torch.testing.assert_close(prediction.grad.flatten(), torch.tensor([2.0, -2.0]))


def test_nft_loss_refuses_bad_inputs():
    x = torch.zeros(2, 1, 1, 1)
    with pytest.raises(ValueError, match="shapes must match"):
        nft_loss(x, torch.zeros(2, 1, 1, 2), x, torch.ones(2), 1.0)
    with pytest.raises(ValueError, match="expected 1-d"):
        nft_loss(x, x, x, torch.ones(2, 1), 1.0)
    with pytest.raises(ValueError, match="2 optimality values for 3"):
        nft_loss(torch.zeros(3, 1, 1, 1), torch.zeros(3, 1, 1, 1), torch.zeros(3, 1, 1, 1), torch.ones(2), 1.0)
    with pytest.raises(ValueError, match=r"optimality must be in \[0, 1\]"):
        nft_loss(x, x, x, torch.tensor([0.5, 1.5]), 1.0)
    with pytest.raises(ValueError, match="beta must be"):
        nft_loss(x, x, x, torch.ones(2), 0.0)


def test_optimality_probabilities_by_hand():
    """Rewards (1, 2, 4, 5): mean 3, deviations (-2, -1, 1, 2), largest 2: r = 0.5 + 0.5 d / 2 = (0, 0.25, 0.75, 1).
    Rewards (0, 0, 3): mean 1, deviations (-1, -1, 2): r = (0.25, 0.25, 1). Equal rewards: 0.5 each.
    Per group: ("a", "a", "b", "b") over (1, 2, 4, 5) gives each pair (0, 1); a lone group takes the batch's.

    Catches: a std normalisation (other values), the sign flipped, clipping in place of the max deviation."""
    torch.testing.assert_close(
        optimality_probabilities(torch.tensor([1.0, 2.0, 4.0, 5.0])), torch.tensor([0.0, 0.25, 0.75, 1.0])
    )
    torch.testing.assert_close(optimality_probabilities(torch.tensor([0.0, 0.0, 3.0])), torch.tensor([0.25, 0.25, 1.0]))
    torch.testing.assert_close(optimality_probabilities(torch.full((3,), 0.7)), torch.full((3,), 0.5))
    grouped = optimality_probabilities(torch.tensor([1.0, 2.0, 4.0, 5.0]), ["a", "a", "b", "b"])
    torch.testing.assert_close(grouped, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    lone = optimality_probabilities(torch.tensor([1.0, 2.0, 4.0, 5.0]), ["a", "a", "a", "b"])
    # group a: (1, 2, 4), mean 7/3, deviations (-4/3, -1/3, 5/3), largest 5/3; b alone: batch-wide, (5 - 3) / 2 -> 1
    torch.testing.assert_close(lone, torch.tensor([0.1, 0.4, 1.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        optimality_probabilities(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="2 group labels for 3"):
        optimality_probabilities(torch.zeros(3), ["a", "b"])
    with pytest.raises(ValueError, match="expected 1-d"):
        optimality_probabilities(torch.zeros(3, 1))


def test_optimality_probabilities_at_two_standard_deviations_by_hand():
    """``scale="two-std"``: r = 0.5 + 0.5 clip(d / (2 sigma), -1, 1), sigma the population standard deviation.
    (1, 2, 4, 5): sigma = sqrt(10 / 4) = 1.5811, d / (2 sigma) = (-0.6325, -0.3162, 0.3162, 0.6325).
    (0 x 9, 10): mean 1, sigma = sqrt((9 + 81) / 10) = 3; the outlier's 9 / 6 = 1.5 is clipped to 1, the others
    -1 / 6: r = 0.4167 (with max-deviation they would get 0.4444 and the outlier 1 too).
    Per group: ("a", "a", "b", "b") over (1, 2, 4, 5): sigma = 0.5 per pair, r = (0.25, 0.75) each.

    Catches: the sample standard deviation (n - 1), no clip, the max deviation in its place."""
    two_std = functools.partial(optimality_probabilities, scale="two-std")
    torch.testing.assert_close(
        two_std(torch.tensor([1.0, 2.0, 4.0, 5.0])), torch.tensor([0.1838, 0.3419, 0.6581, 0.8162]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        two_std(torch.tensor([0.0] * 9 + [10.0])), torch.tensor([5 / 12] * 9 + [1.0]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        two_std(torch.tensor([1.0, 2.0, 4.0, 5.0]), ["a", "a", "b", "b"]), torch.tensor([0.25, 0.75, 0.25, 0.75])
    )
    torch.testing.assert_close(two_std(torch.full((3,), 0.7)), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="scale must be one of"):
        optimality_probabilities(torch.zeros(3), scale="std")


def test_stratified_timesteps_take_one_draw_per_stratum():
    """[100, 1000) in 3 strata of 300: row j's draws lie in [100, 400), [400, 700), [700, 1000)."""
    timesteps = stratified_timesteps(50, 3, 100, 1000, torch.Generator().manual_seed(0))
    assert timesteps.shape == (50, 3) and timesteps.dtype == torch.long
    for j, (low, high) in enumerate([(100, 400), (400, 700), (700, 1000)]):
        assert bool(((timesteps[:, j] >= low) & (timesteps[:, j] < high)).all()), (j, timesteps[:, j])
    assert len(set(timesteps[:, 0].tolist())) > 10  # independent draws per sample
    with pytest.raises(ValueError, match="at least count=5"):
        stratified_timesteps(2, 5, 0, 3, torch.Generator())
    with pytest.raises(ValueError, match="must be >= 1"):
        stratified_timesteps(0, 1, 0, 10, torch.Generator())


# ------------------------------------------------------------------------------------------ the agent
@pytest.fixture(scope="module")
def env(tiny_pipeline):
    settings = EnvConfig(
        tiny_pipeline, TINY_REWARD, TINY_PROMPTS, num_inference_steps=3, latent_bound=TINY_LATENT_BOUND
    )
    env = settings.make(num_envs=2)
    yield env
    env.close()


def one_update_config(**overrides) -> AgentConfig:
    defaults = {
        "batch_size": 2,
        "batches_per_epoch": 1,
        "lora_rank": 2,
        "train_batch_size": None,
        "inner_epochs": 1,
        "per_prompt_stats": False,
        "learning_rate": 1e-3,
        "nft_timesteps": 2,
        "seed": 0,
    }
    return AgentConfig(**{**defaults, **overrides})


def diffusion_losses(agent, samples: Trajectories, generator_state: torch.Tensor) -> torch.Tensor:
    r"""Each sample's plain diffusion loss :math:`\lVert f_\theta(x_t, t, c) - y_t\rVert^2` (mean over dims and over its
    training points), ``(B,)``, at the training points the update starting from ``generator_state`` draws; computed
    here from the policy's prediction, not by the loss under test."""
    from agents.algorithms.rwr import diffusion_target

    scheduler = agent.policy.scheduler
    clean = samples.next_latents[:, -1]  # (B, C, H, W)
    saved = agent.generator.get_state()
    agent.generator.set_state(generator_state)
    timesteps, noise = agent.training_points(clean)  # (B, k), (B, k, C, H, W)
    agent.generator.set_state(saved)
    total = torch.zeros(len(samples))
    with torch.no_grad():
        for j in range(timesteps.shape[1]):
            noisy = scheduler.add_noise(clean, noise[:, j], timesteps[:, j])
            prediction = agent.policy.predict(noisy, timesteps[:, j], samples.prompt_embeddings)
            target = diffusion_target(scheduler, clean, noise[:, j], timesteps[:, j])
            total += (prediction - target).pow(2).mean(dim=(1, 2, 3)) / timesteps.shape[1]
    return total


@pytest.mark.parametrize("overrides", [{}, {"nft_sampling_steps": 2}, {"lora_rank": 0, "learning_rate": 1e-4}])
def test_one_update_fits_the_good_sample_and_unfits_the_bad(env, overrides):
    """Rewards (1, 0) give optimalities (1, 0); after one update the diffusion loss of the first sample at the
    update's training points has fallen and that of the second risen (LoRA and full fine-tuning, both samplers).

    Catches: r and 1 - r swapped, beta's sign swapped between the implicit policies, the prediction detached (nothing
    trains), the target of the other prediction type."""
    agent = make_agent("nft", env, one_update_config(**overrides))
    try:
        samples = dataclasses.replace(agent.collect()[0], rewards=torch.tensor([1.0, 0.0]))
        optimality = agent.advantages(samples)
        torch.testing.assert_close(optimality, torch.tensor([1.0, 0.0]))
        state = agent.generator.get_state()
        before = diffusion_losses(agent, samples, state)
        agent.update(samples, optimality)
        change = diffusion_losses(agent, samples, state) - before
        assert change[0] < 0 < change[1], change
    finally:
        agent.close()


def test_equal_rewards_train_nothing_at_the_old_policy(env):
    """All optimalities 0.5: at theta = theta_old the positive and negative terms' gradients cancel, so one update of
    one minibatch leaves the LoRA weights where they were (Adam's first step on a zero gradient is zero)."""
    agent = make_agent("nft", env, one_update_config())
    try:
        samples = agent.collect()[0]
        before = {k: v.detach().clone() for k, v in agent.policy.named_trainable_parameters().items()}
        agent.update(samples, torch.full((2,), 0.5))
        after = agent.policy.named_trainable_parameters()
        assert all(torch.allclose(before[k], after[k], atol=1e-7) for k in before)
    finally:
        agent.close()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"nft_sampling_steps": 2, "inner_epochs": 2, "train_batch_size": 1},
        {"nft_old_ema": 0.5, "per_prompt_stats": True},
        {"lora_rank": 0, "learning_rate": 1e-4, "nft_old_ema": 0.5},
    ],
    ids=["env-sampler", "few-steps", "soft-update", "full-fine-tune"],
)
def test_nft_runs_end_to_end(env, overrides):
    agent = make_agent("nft", env, one_update_config(**overrides))
    try:
        start = {k: v.detach().clone() for k, v in agent.policy.named_trainable_parameters().items()}
        results = [agent.train_epoch() for _ in range(2)]
        trained = agent.policy.named_trainable_parameters()
        for result in results:
            for key in ("reward_mean", "loss", "nft_positive_error", "nft_negative_error", "nft_drift_from_old"):
                assert math.isfinite(result.metrics[key]), key
            assert result.final_images.shape == (2, 3, 32, 32)
        assert any(not torch.equal(start[k], trained[k]) for k in start)
        if agent.old_parameters is not None:  # halfway between the start and the (twice-updated) current weights
            assert any(not torch.equal(start[k], agent.old_parameters[k]) for k in start)
            assert any(not torch.equal(trained[k], agent.old_parameters[k]) for k in start)
        if overrides.get("nft_sampling_steps"):
            assert agent.sampling_scheduler.num_inference_steps == 2
            assert env.unwrapped.diffusion.scheduler.num_inference_steps == 3  # the env's own is untouched
    finally:
        agent.close()


def test_herd_over_nft_trains_on_last_epochs_images_under_one_sentence(env):
    """HERD over NFT: the second epoch trains on its 2 new samples and the 2 relabeled ones of the first epoch (each
    under one sentence of its prompt, its reward recomputed for that sentence); the checkpoint keeps the buffer."""
    agent = make_agent("herd", env, one_update_config(herd_base="nft", per_prompt_stats=True))
    try:
        first, second = agent.train_epoch(), agent.train_epoch()
        assert first.metrics["num_train_samples"] == 2.0 and second.metrics["num_train_samples"] == 4.0
        assert math.isfinite(second.metrics["herd_relabeled_reward_mean"])
        (replayed,) = agent.relabeler.history
        assert all(prompt.count(".") == 1 for prompt in replayed.prompts), replayed.prompts  # one sentence each
        assert agent.state_dict()["relabeler"]["history"] is not None
    finally:
        agent.close()


def test_nft_refuses_uncorrected_herd_and_bad_knobs_before_building_anything(env):
    with pytest.raises(ValueError, match="herd over nft needs herd_off_policy_correction"):
        make_agent("herd", env, one_update_config(herd_base="nft", herd_off_policy_correction=False))
    for field, value, message in [
        ("nft_beta", 0.0, "nft_beta must be"),
        ("nft_timesteps", 0, "nft_timesteps must be"),
        ("nft_sampling_steps", 0, "nft_sampling_steps must be"),
        ("nft_old_ema", 1.0, "nft_old_ema must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_agent("nft", env, one_update_config(**{field: value}))


def test_nft_groups_sample_each_prompt_k_times_and_normalise_within_them(env, tiny_pipeline):
    """``nft_group_size`` 2 with a batch of 4: two prompts, each twice in a row, and each sample's optimality is
    normalised within its own pair (rewards (0.9, 0.1, 0.5, 0.3): r = (1, 0, 1, 0), not the batch's
    (1, 0, 0.75, 0.25))."""
    settings = EnvConfig(
        tiny_pipeline, TINY_REWARD, TINY_PROMPTS, num_inference_steps=3, latent_bound=TINY_LATENT_BOUND
    )
    four = settings.make(num_envs=4)
    agent = make_agent("nft", four, one_update_config(batch_size=4, nft_group_size=2, per_prompt_stats=True))
    try:
        for _ in range(5):
            prompts = agent.sample_prompts()
            assert len(prompts) == 4 and prompts[0] == prompts[1] and prompts[2] == prompts[3]
        samples = dataclasses.replace(
            agent.collect()[0], prompts=["a", "a", "b", "b"], rewards=torch.tensor([0.9, 0.1, 0.5, 0.3])
        )
        torch.testing.assert_close(agent.advantages(samples), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    finally:
        agent.close()
        four.close()
    with pytest.raises(ValueError, match="batch_size=2 must be a multiple of nft_group_size=4"):
        make_agent("nft", env, one_update_config(nft_group_size=4))
    with pytest.raises(ValueError, match="nft_group_size must be >= 2"):
        make_agent("nft", env, one_update_config(nft_group_size=1))


@pytest.mark.parametrize("overrides", [{"nft_sampling_steps": 2, "nft_old_ema": 0.5}, {"lora_rank": 0}])
def test_a_resumed_nft_run_continues_exactly(env, tmp_path, overrides):
    """Three epochs straight, and two epochs then a resume from the checkpoint for the third: the same history
    (the old policy's weights are in the checkpoint; without them the soft-updated run would differ)."""
    config = one_update_config(**overrides)
    options = {"eval_prompts": "a small blue square", "eval_samples": 2, "eval_every": 1, "checkpoint_every": 1}
    with Trainer(env, "nft", config, tmp_path / "straight", **options) as run:
        run.train(epochs=3)
    with Trainer(env, "nft", config, tmp_path / "resumed", **options) as run:
        run.train(epochs=2)
    with Trainer.resume(tmp_path / "resumed", env=env) as resumed:
        assert resumed.settings.agent == "nft"
        resumed.train(epochs=3)
    timing = {"epoch_seconds", "samples_per_second", "elapsed_seconds"}

    def history(folder):
        return [{k: v for k, v in r.items() if k not in timing} for r in read_history(folder)]

    assert [r["epoch"] for r in history(tmp_path / "straight")] == [1, 2, 3]
    assert history(tmp_path / "resumed") == history(tmp_path / "straight")
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["config"]["nft_old_ema"] == config.nft_old_ema
