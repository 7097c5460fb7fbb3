"""The agents' shared math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from agents.algorithms.math import (
    PerPromptStatTracker,
    clip_advantages,
    cosine_decay_factor,
    gaussian_step_kl,
    leave_one_out_baseline,
    normalize_advantages,
    ppo_clipped_loss,
    reward_weights,
    sample_train_timesteps,
    step_log_prob,
)
from diffusion_gym.prompts import split_sentences


# ------------------------------------------------------------------------------------------ PPO
def test_ppo_clipped_loss_hand_computed():
    # ratios e^{log}: [1.0, 1.5, 0.5, 1.05]; eps = 0.2; advantages [1, 1, -2, -1]
    old = torch.zeros(4)
    new = torch.tensor([0.0, math.log(1.5), math.log(0.5), math.log(1.05)])
    adv = torch.tensor([1.0, 1.0, -2.0, -1.0])
    loss, clipfrac, approx_kl = ppo_clipped_loss(new, old, adv, clip_range=0.2)
    # min(rA, clip(r)A): 1*1=1 ; min(1.5, 1.2)=1.2 ; min(-1.0, 0.8*-2=-1.6)=-1.6 ; min(-1.05, -1.05)=-1.05
    expected = -(1.0 + 1.2 - 1.6 - 1.05) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)  # |1.5-1| and |0.5-1| > 0.2
    assert approx_kl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.05) ** 2) / 4)


def test_ppo_ratio_is_new_over_old_log_probs_that_are_not_zero():
    # log-probs are sums over latent dims, far from 0: log r = new - old. Here r = e^{0.2} in [0.5, 1.5] and
    # e^{-0.2}, unclipped: loss = -(1.2214 * 1 + 0.8187 * -1) / 2 (a sum new + old would give e^{0.8}, clipped)
    new = torch.tensor([-99.8, -100.2])
    old = torch.tensor([-100.0, -100.0])
    loss, _, approx_kl = ppo_clipped_loss(new, old, torch.tensor([1.0, -1.0]), clip_range=0.5)
    assert loss.item() == pytest.approx(-(math.exp(0.2) - math.exp(-0.2)) / 2, abs=1e-4)
    assert approx_kl.item() == pytest.approx(0.5 * 0.2**2, abs=1e-4)


def test_ppo_gradient_hand_computed():
    # d/dlogp of -min(rA, clip(r)A)/N: -rA/N where unclipped is the min, 0 where the clipped term is
    new = torch.tensor([0.0, math.log(1.5), math.log(0.5)], requires_grad=True)
    adv = torch.tensor([2.0, 1.0, 1.0])
    loss, _, _ = ppo_clipped_loss(new, torch.zeros(3), adv, clip_range=0.2)
    loss.backward()
    # row 0: r=1, -2/3; row 1: r=1.5>1.2 with A>0, clipped -> 0; row 2: r=0.5 with A>0: min(0.5, 0.8) = 0.5 unclipped
    assert new.grad.tolist() == pytest.approx([-2.0 / 3, 0.0, -0.5 / 3], abs=1e-6)


def test_ppo_treats_old_log_probs_and_advantages_as_constants():
    # old log-probs and advantages that carry gradients (e.g. a value baseline) get none from the loss
    new = torch.tensor([0.0, 0.1], requires_grad=True)
    old = torch.tensor([0.0, 0.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0], requires_grad=True)
    loss, _, _ = ppo_clipped_loss(new, old, adv, clip_range=0.2)
    loss.backward()
    assert old.grad is None and adv.grad is None
    assert new.grad is not None


def test_ppo_dual_clip_bounds_negative_advantages():
    new = torch.tensor([math.log(10.0), math.log(10.0)], requires_grad=True)
    adv = torch.tensor([-1.0, 1.0])
    loss, _, _ = ppo_clipped_loss(new, torch.zeros(2), adv, clip_range=0.2, dual_clip=3.0)
    # A<0: max(min(-10, -1.2), 3 * -1) = -3 ; A>0: min(10, 1.2) = 1.2
    assert loss.item() == pytest.approx(-(-3.0 + 1.2) / 2)
    loss.backward()
    assert new.grad.tolist() == [0.0, 0.0]  # both bounded: no gradient
    # A = -2 is bounded at 3 * -2 = -6 (not 3 / -2); a positive A below 1 is left to the ordinary clip, min(5, 0.6)
    adv = torch.tensor([-2.0, 0.5])
    loss, _, _ = ppo_clipped_loss(torch.full((2,), math.log(10.0)), torch.zeros(2), adv, clip_range=0.2, dual_clip=3.0)
    assert loss.item() == pytest.approx(-(-6.0 + 0.6) / 2)
    # a huge off-policy log-ratio stays finite
    loss, _, _ = ppo_clipped_loss(torch.tensor([500.0]), torch.zeros(1), torch.tensor([-1.0]), 0.2, 3.0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(3.0)


def test_ppo_rejects_bad_clip():
    with pytest.raises(ValueError, match="clip_range"):
        ppo_clipped_loss(torch.zeros(1), torch.zeros(1), torch.ones(1), clip_range=0.0)
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clipped_loss(torch.zeros(1), torch.zeros(1), torch.ones(1), clip_range=0.1, dual_clip=1.0)
    loss, _, _ = ppo_clipped_loss(torch.zeros(1), torch.zeros(1), -torch.ones(1), clip_range=0.1, dual_clip=1.5)
    assert loss.item() == pytest.approx(1.0)  # any dual_clip > 1 is valid: r = 1, max(min(-1, -1), -1.5) = -1


# ------------------------------------------------------------------------------------------ advantages
def test_normalize_and_clip_advantages():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, population std sqrt(3.5)
    expected = [(r - 3.0) / math.sqrt(3.5) for r in (1.0, 2.0, 3.0, 6.0)]
    assert normalize_advantages(rewards).tolist() == pytest.approx(expected, abs=1e-5)
    assert clip_advantages(torch.tensor([-9.0, 0.5, 9.0]), 5.0).tolist() == [-5.0, 0.5, 5.0]


def test_normalize_advantages_of_nearly_equal_rewards_stay_finite():
    # population std 1e-6, the size of eps: A = -+1e-6 / (1e-6 + 1e-6) = -+0.5 (with std - eps: a division by ~0)
    advantages = normalize_advantages(torch.tensor([0.0, 2e-6]))
    assert advantages.tolist() == pytest.approx([-0.5, 0.5], abs=1e-4)


def test_reward_weights_hand_computed():
    advantages = torch.tensor([0.0, math.log(2.0)])
    # tau = 1: exp(A) = [1, 2], mean 1.5 -> [2/3, 4/3]
    torch.testing.assert_close(reward_weights(advantages, 1.0), torch.tensor([2 / 3, 4 / 3]))
    # tau = 0.5: exp(2A) = [1, 4], mean 2.5 -> [0.4, 1.6]
    torch.testing.assert_close(reward_weights(advantages, 0.5), torch.tensor([0.4, 1.6]))
    # large advantages do not overflow (the max is subtracted first); equal ones give equal weights
    torch.testing.assert_close(reward_weights(torch.tensor([1000.0, 1000.0]), 0.01), torch.ones(2))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        reward_weights(advantages, 0.0)


def test_per_prompt_stat_tracker_falls_back_then_uses_history():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    # batch 1: "a" has 2 rewards (< min_count) -> batch stats over all 4 rewards: mean 2.5, std sqrt(1.25)
    adv = tracker.update(["a", "a", "b", "b"], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert adv.tolist() == pytest.approx([(r - 2.5) / math.sqrt(1.25) for r in (1, 2, 3, 4)], abs=1e-5)
    # batch 2: "a" now has [1, 2, 3, 5] (>= 3) -> its own mean 2.75 and std
    adv = tracker.update(["a", "a"], torch.tensor([3.0, 5.0]))
    history = torch.tensor([1.0, 2.0, 3.0, 5.0])
    mean, std = history.mean().item(), history.std(unbiased=False).item()
    assert adv.tolist() == pytest.approx([(3 - mean) / std, (5 - mean) / std], abs=1e-5)
    # the buffer keeps the last 4 rewards only
    tracker.update(["a"], torch.tensor([7.0]))
    assert list(tracker.stats["a"]) == [2.0, 3.0, 5.0, 7.0]
    # state round trip
    clone = PerPromptStatTracker(buffer_size=4, min_count=3)
    clone.load_state_dict(tracker.state_dict())
    assert clone.state_dict() == tracker.state_dict()


def test_per_prompt_stat_tracker_at_exactly_min_count_and_its_errors():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=2)
    # "a" has exactly min_count = 2 rewards [1, 3]: its own mean 2 and population std 1 -> [-1, 1];
    # "b" has 1 -> the batch's [1, 3, 10]: mean 14/3, population std sqrt(134)/3 -> (10 - 14/3) / (sqrt(134)/3)
    adv = tracker.update(["a", "a", "b"], torch.tensor([1.0, 3.0, 10.0]))
    assert adv.tolist() == pytest.approx([-1.0, 1.0, 16 / math.sqrt(134)], abs=1e-5)
    # a prompt's own std of 1e-6, the size of eps: -+1e-6 / (1e-6 + 1e-6) = -+0.5 (std - eps: a division by ~0)
    tiny = PerPromptStatTracker(min_count=1).update(["c", "c"], torch.tensor([0.0, 2e-6]))
    assert tiny.tolist() == pytest.approx([-0.5, 0.5], abs=1e-4)
    # a loaded buffer keeps its size limit: one more reward drops the oldest
    clone = PerPromptStatTracker(buffer_size=4, min_count=2)
    clone.load_state_dict({"a": [1.0, 2.0, 3.0, 4.0]})
    clone.update(["a"], torch.tensor([5.0]))
    assert list(clone.stats["a"]) == [2.0, 3.0, 4.0, 5.0]
    PerPromptStatTracker(buffer_size=1, min_count=1)  # the smallest valid sizes
    for sizes in ({"buffer_size": 0}, {"min_count": 0}):
        with pytest.raises(ValueError, match="buffer_size and min_count must be >= 1"):
            PerPromptStatTracker(**sizes)
    with pytest.raises(ValueError, match="got 2 prompts for 3 rewards"):
        tracker.update(["a", "a"], torch.ones(3))


def test_leave_one_out_baseline_hand_example():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]])
    baseline = leave_one_out_baseline(rewards)
    # group 1, sum 12: (12-1)/3, (12-2)/3, (12-3)/3, (12-6)/3 ; group 2, sum 8: 8/3, 8/3, 4/3, 4/3
    assert baseline.tolist()[0] == pytest.approx([11 / 3, 10 / 3, 3.0, 2.0])
    assert baseline.tolist()[1] == pytest.approx([8 / 3, 8 / 3, 4 / 3, 4 / 3])
    # LOO advantage r_i - b_i = K/(K-1) (r_i - mean)
    assert (rewards - baseline)[0].tolist() == pytest.approx([4 / 3 * (r - 3.0) for r in (1, 2, 3, 6)])


def test_leave_one_out_baseline_with_group_labels():
    rewards = torch.tensor([1.0, 5.0, 2.0, 3.0, 10.0])
    groups = ["x", "y", "x", "x", "z"]
    baseline = leave_one_out_baseline(rewards, groups)
    # x: [1, 2, 3] -> (5, 4, 3)/2 ; y and z are alone -> the mean of all rewards, 21/5
    assert baseline.tolist() == pytest.approx([2.5, 4.2, 2.0, 1.5, 4.2])
    with pytest.raises(ValueError):
        leave_one_out_baseline(torch.ones(3, 1))


def test_leave_one_out_baseline_of_pairs_and_its_errors():
    # K = 2: each sample's baseline is the other's reward, (G, K) or labelled; "y" alone: the mean, 12/3
    assert leave_one_out_baseline(torch.tensor([[1.0, 4.0]])).tolist() == [[4.0, 1.0]]
    assert leave_one_out_baseline(torch.tensor([1.0, 4.0, 7.0]), ["x", "x", "y"]).tolist() == [4.0, 1.0, 4.0]
    with pytest.raises(ValueError, match=r"\(G, K\) with K >= 2 when no groups are given, got \(3, 1\)"):
        leave_one_out_baseline(torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"got 2 group labels for rewards of shape \(3,\)"):
        leave_one_out_baseline(torch.ones(3), ["x", "x"])
    with pytest.raises(ValueError, match=r"got 3 group labels for rewards of shape \(3, 1\)"):
        leave_one_out_baseline(torch.ones(3, 1), ["x", "x", "y"])


# ------------------------------------------------------------------------------------------ shapes
def test_a_column_advantage_is_an_error_not_an_n_by_n_objective():
    # (N, 1) advantages against (N,) log-probs would broadcast to (N, N): 9 terms for 3 samples
    log_probs, old = torch.zeros(3, requires_grad=True), torch.zeros(3)
    with pytest.raises(ValueError, match=r"expected 1-d tensors, got shapes \{'advantages': \(3, 1\)\}"):
        ppo_clipped_loss(log_probs, old, torch.ones(3, 1), clip_range=0.2)
    with pytest.raises(ValueError, match=r"shapes must match \(no broadcasting\).*'old_log_probs': \(1,\)"):
        ppo_clipped_loss(log_probs, torch.zeros(1), torch.ones(3), clip_range=0.2)
    with pytest.raises(ValueError, match="expected 1-d tensors"):
        ppo_clipped_loss(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), clip_range=0.2)
    with pytest.raises(ValueError, match=r"shapes must match \(no broadcasting\).*'log_probs': \(1,\)"):
        ppo_clipped_loss(torch.zeros(1), torch.zeros(3), torch.ones(3), clip_range=0.2)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: normalize_advantages(torch.ones(4, 1)), "'rewards': \\(4, 1\\)"),
        (lambda: reward_weights(torch.ones(2, 2), 1.0), "'advantages': \\(2, 2\\)"),
        (lambda: PerPromptStatTracker().update(["a"], torch.ones(1, 1)), "'rewards': \\(1, 1\\)"),
        (lambda: sample_train_timesteps(torch.ones(2, 3, dtype=torch.bool), 1, 1.0, None), "'stochastic'"),
        (lambda: sample_train_timesteps(torch.ones(3), 1, 1.0, None), "must be a bool tensor"),
        (lambda: step_log_prob(torch.zeros(2, 4), torch.zeros(2, 4), torch.tensor(1.0)), "expected 4-d"),
        (lambda: step_log_prob(torch.zeros(2, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.tensor(1.0)), "must match"),
        (lambda: step_log_prob(torch.zeros(2, 1, 2, 2), torch.zeros(2, 2, 2), torch.tensor(1.0)), "'mean'"),
        (lambda: gaussian_step_kl(torch.zeros(2, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.tensor(1.0)), "must match"),
    ],
)
def test_shared_math_checks_its_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------ timesteps
def test_cosine_decay_factor_hand_computed():
    # f(e) = 0.1 + 0.9 * (1 + cos(pi * min(e, 4) / 4)) / 2 for 4 decay epochs to a final fraction 0.1
    expected = [1.0, 0.1 + 0.45 * (1 + math.sqrt(0.5)), 0.55, 0.1 + 0.45 * (1 - math.sqrt(0.5)), 0.1, 0.1]
    assert [cosine_decay_factor(e, 4, 0.1) for e in range(6)] == pytest.approx(expected, abs=1e-12)
    assert expected[1] == pytest.approx(0.868198, abs=1e-6)  # by hand: 0.1 + 0.45 * 1.707107
    assert cosine_decay_factor(1, 1, 0.0) == 0.0 and cosine_decay_factor(7, 2, 1.0) == 1.0
    for args, match in [((-1, 4, 0.1), "epoch"), ((0, 0, 0.1), "decay_epochs"), ((0, 4, 1.5), "final_fraction")]:
        with pytest.raises(ValueError, match=match):
            cosine_decay_factor(*args)


def test_sample_train_timesteps():
    stochastic = torch.tensor([True, True, False, True, True])
    generator = torch.Generator().manual_seed(0)
    steps = sample_train_timesteps(stochastic, num_samples=6, fraction=0.5, generator=generator)
    assert steps.shape == (6, 2)  # ceil(0.5 * 4 stochastic steps)
    for row in steps.tolist():
        assert len(set(row)) == 2 and 2 not in row  # distinct, never the deterministic step
    full = sample_train_timesteps(stochastic, 3, 1.0, generator)
    assert all(sorted(row) == [0, 1, 3, 4] for row in full.tolist())
    with pytest.raises(ValueError, match="fraction"):
        sample_train_timesteps(stochastic, 1, 0.0, generator)
    with pytest.raises(ValueError, match="stochastic"):
        sample_train_timesteps(torch.zeros(3, dtype=torch.bool), 1, 1.0, generator)


# ------------------------------------------------------------------------------------------ Gaussians
def test_step_log_prob_and_kl_hand_computed():
    # d = 2 dims, sigma = 0.5: log N(x; mu, s^2 I) = -|x-mu|^2/(2 s^2) - d log s - d/2 log 2pi
    mean = torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2)
    action = torch.tensor([[[[1.0, 1.0]]]])
    sigma = torch.tensor([0.5])
    expected = -1.0 / (2 * 0.25) - 2 * math.log(0.5) - math.log(2 * math.pi)
    assert step_log_prob(action, mean, sigma).item() == pytest.approx(expected, abs=1e-5)
    # KL(N(mu1, s^2) || N(mu2, s^2)) = |mu1 - mu2|^2 / (2 s^2)
    assert gaussian_step_kl(action, mean, sigma).item() == pytest.approx(1.0 / 0.5)
    assert gaussian_step_kl(mean, mean, sigma).item() == 0.0


def test_split_sentences():
    prompt = "A large red circle on the left. A small blue triangle at the top right. A gray background."
    assert split_sentences(prompt) == [
        "A large red circle on the left.",
        "A small blue triangle at the top right.",
        "A gray background.",
    ]
    assert split_sentences("one sentence without a stop") == ["one sentence without a stop"]
    assert split_sentences("Wow! Really? Yes.") == ["Wow!", "Really?", "Yes."]
