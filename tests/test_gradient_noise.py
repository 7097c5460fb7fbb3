"""benchmarks/probes/gradient_noise.py: the noise-scale estimator by hand, and the command on the tiny pipeline."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _scripts import load_script

gradient_noise = load_script("benchmarks/probes/gradient_noise.py")


def test_noise_scale_matches_hand_computed_values():
    # g1 = (2, 0), g2 = (2, 2), b = 2, k = 2:
    # S_small = (4 + 8) / 2 = 6; S_big = |(2, 1)|^2 = 5; tr(Sigma) = (6 - 5) / (1/2 - 1/4) = 4;
    # |G|^2 = 5 - 4 / 4 = 4; B_noise = 4 / 4 = 1; cos(g1, g2) = 4 / (2 * sqrt(8)) = 1 / sqrt(2).
    estimate = gradient_noise.noise_scale(torch.tensor([[2.0, 0.0], [2.0, 2.0]]), minibatch=2)
    assert estimate.small_batch_sq_norm == pytest.approx(6.0)
    assert estimate.big_batch_sq_norm == pytest.approx(5.0)
    assert estimate.trace_sigma == pytest.approx(4.0)
    assert estimate.true_gradient_sq_norm == pytest.approx(4.0)
    assert estimate.noise_scale == pytest.approx(1.0)
    assert estimate.mean_cosine == pytest.approx(1 / math.sqrt(2))


def test_noise_scale_is_infinite_when_the_gradients_agree_on_nothing():
    # Orthogonal gradients, b = 4: S_small = 1, S_big = 0.5, tr(Sigma) = 0.5 / (1/4 - 1/8) = 4, |G|^2 = 0.5 - 4/8 = 0.
    estimate = gradient_noise.noise_scale(torch.eye(2), minibatch=4)
    assert estimate.true_gradient_sq_norm == pytest.approx(0.0, abs=1e-12)
    assert estimate.noise_scale == math.inf
    assert estimate.mean_cosine == pytest.approx(0.0)


def test_noise_scale_needs_two_minibatches():
    with pytest.raises(ValueError, match="at least 2"):
        gradient_noise.noise_scale(torch.ones(1, 3), minibatch=4)


def test_command_measures_the_tiny_pipeline(tmp_path):
    output = tmp_path / "noise.json"
    flags = ["--model", "tiny", "--samples", "8", "--minibatch", "2", "--num-inference-steps", "3", "--threads", "1"]
    result = gradient_noise.main([*flags, "--segments", "2", "--output", str(output)])
    whole = result["noise_scales"]["all steps"]
    assert whole["num_minibatches"] == 4 and whole["minibatch"] == 2
    assert math.isfinite(whole["mean_cosine"]) and whole["small_batch_sq_norm"] > 0
    assert len(result["noise_scales"]) == 3  # all steps + 2 segments
    assert json.loads(output.read_text())["noise_scales"] == result["noise_scales"]


def test_command_measures_rwr_on_the_tiny_pipeline():
    flags = ["--model", "tiny", "--samples", "8", "--minibatch", "2", "--num-inference-steps", "3", "--threads", "1"]
    result = gradient_noise.main([*flags, "--objective", "rwr"])
    whole = result["noise_scales"]["all steps"]
    assert result["objective"] == "rwr" and whole["num_minibatches"] == 4
    assert math.isfinite(whole["mean_cosine"]) and whole["small_batch_sq_norm"] > 0
    with pytest.raises(ValueError, match="--objective must be"):
        gradient_noise.measure("unused", None, None, 8, 2, None, 0, 8, 50.0, objective="ppo")
    with pytest.raises(ValueError, match="--segments applies to DDPO"):
        gradient_noise.measure("unused", None, None, 8, 2, None, 0, 8, 50.0, segments=2, objective="rwr")


def test_step_segments_split_the_stochastic_steps_in_order():
    stochastic = torch.tensor([True, True, True, True, True, False])  # the last step is deterministic
    assert gradient_noise.step_segments(stochastic, 2) == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="--segments"):
        gradient_noise.step_segments(stochastic, 6)


def test_samples_must_split_into_minibatches():
    with pytest.raises(ValueError, match="multiple of --minibatch"):
        gradient_noise.measure("unused", None, None, 10, 4, None, 0, 8, 50.0)


def test_branch_advantages_are_leave_one_out_within_groups_by_hand():
    # Two groups of K = 2: (1, 0) and (0, 0). LOO differences: 1 - 0, 0 - 1, 0, 0; batch std of
    # (1, 0, 0, 0) = sqrt(3/16) = 0.4330; so (2.309, -2.309, 0, 0), and (2, -2, 0, 0) when clipped at 2.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    advantages = gradient_noise.branch_advantages(rewards, branches=2, max_abs=5.0)
    expected = torch.tensor([1.0, -1.0, 0.0, 0.0]) / math.sqrt(3 / 16)
    assert torch.allclose(advantages, expected, atol=1e-4)
    assert torch.equal(gradient_noise.branch_advantages(rewards, 2, max_abs=2.0), torch.tensor([2.0, -2.0, 0.0, 0.0]))
    assert gradient_noise.unequal_groups(rewards, 2) == "1 of 2"


def test_parse_step_range_keeps_the_stochastic_steps_in_range():
    stochastic = torch.tensor([True, True, True, True, False])
    assert gradient_noise.parse_step_range(None, stochastic) == [0, 1, 2, 3]
    assert gradient_noise.parse_step_range("1-9", stochastic) == [1, 2, 3]
    with pytest.raises(ValueError, match="none of the stochastic steps"):
        gradient_noise.parse_step_range("4-4", stochastic)
    with pytest.raises(ValueError, match="must look like '0-6'"):
        gradient_noise.parse_step_range("2..4", stochastic)


def test_branches_share_their_prefix_and_differ_only_from_the_branch_step(tiny_pipeline):
    from agents import AgentConfig, EnvConfig, make_agent
    from agents.envs import TINY_REWARD

    settings = EnvConfig(tiny_pipeline, TINY_REWARD, ("a red circle.", "a blue square."), 4, latent_bound=1e4)
    env = settings.make(num_envs=4)
    agent = make_agent("ddpo", env, AgentConfig(batch_size=4, batches_per_epoch=1))
    try:
        samples, chosen = gradient_noise.collect_branches(agent, env, 8, branches=2, steps="1-2")
    finally:
        agent.close()
        env.close()
    assert chosen.shape == (8,) and set(chosen.tolist()) <= {1, 2}
    for group in range(4):
        a, b = 2 * group, 2 * group + 1
        j = int(chosen[a])
        assert int(chosen[b]) == j and samples.prompts[a] == samples.prompts[b]
        assert torch.equal(samples.latents[a, : j + 1], samples.latents[b, : j + 1])  # same x_T, same means up to j
        assert not torch.allclose(samples.next_latents[a, j], samples.next_latents[b, j])  # each its own action
        assert (samples.log_probs[a, :j] == 0).all() and (samples.log_probs[a, j + 1 :] == 0).all()


def test_command_measures_the_branching_estimator_on_the_tiny_pipeline():
    flags = ["--model", "tiny", "--samples", "8", "--minibatch", "4", "--num-inference-steps", "3", "--threads", "1"]
    result = gradient_noise.main([*flags, "--objective", "branch", "--branches", "2"])
    whole = result["noise_scales"]["all steps"]
    assert result["branches"] == 2 and whole["num_minibatches"] == 2
    assert math.isfinite(whole["mean_cosine"]) and whole["small_batch_sq_norm"] > 0
    with pytest.raises(ValueError, match="--branches"):
        gradient_noise.measure("unused", None, None, 8, 2, None, 0, 8, 50.0, objective="branch", branches=4)
