r"""Direction tests: one update of each agent moves the policy the way its advantages say (seconds each).

Each test names, in its docstring, the mutations of the code under test it fails on (each was applied by hand and
seen to fail; ``docs/experiments/2026-12-04-mutation-testing.md`` has the tool-driven run).

The policy-gradient agents are checked by re-scoring: a batch is sampled once from the tiny random pipeline, its
rewards are replaced by hand-made ones, the agent turns them into advantages and takes one update, and the same
actions are scored again under the updated policy. The trajectory's log-probability :math:`\sum_t \log
\pi_\theta(x_{t-1} \mid x_t, c)` (summed over its stochastic steps) must rise where the advantage is positive and
fall where it is negative. RWR has no log-probs: its surrogate of :math:`-\log p_\theta(x_0 \mid c)`, the diffusion
loss on the sample, must fall where the weight is positive and rise where it is negative.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from agents import AgentConfig, make_agent
from agents.algorithms.buffers import StepBatch, Trajectories
from agents.algorithms.ddpo import DDPOAgent
from agents.algorithms.dpok import DPOKAgent
from agents.algorithms.herd import current_log_probs, relabel
from agents.algorithms.loop import LOOPAgent
from agents.algorithms.reinforce import ReinforceAgent
from agents.envs import TINY_LATENT_BOUND, TINY_PROMPTS, TINY_REWARD, EnvConfig
from diffusion_gym.prompts import split_sentences
from diffusion_gym.sampling import PolicyStep

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HIGH_LOW = torch.tensor([1.0, 0.0])  # hand-made rewards of a batch of two: the first trajectory is the better one


@pytest.fixture(scope="module")
def env(tiny_pipeline):
    """Two episodes of three DDIM steps on the tiny random pipeline (every step is stochastic at eta = 1)."""
    settings = EnvConfig(
        tiny_pipeline, TINY_REWARD, TINY_PROMPTS, num_inference_steps=3, latent_bound=TINY_LATENT_BOUND
    )
    return settings.make(num_envs=2)


def one_update_config(**overrides) -> AgentConfig:
    """One optimiser step per update: the whole batch, every step, one pass."""
    defaults = {
        "batch_size": 2,
        "batches_per_epoch": 1,
        "lora_rank": 2,
        "loop_k": 2,
        "train_batch_size": None,
        "train_timestep_fraction": 1.0,
        "inner_epochs": 1,
        "per_prompt_stats": False,
        "seed": 0,
    }
    return AgentConfig(**{**defaults, **overrides})


def with_rewards(samples: Trajectories, rewards: torch.Tensor) -> Trajectories:
    return dataclasses.replace(samples, rewards=rewards.clone())


def trajectory_log_probs(policy, samples: Trajectories) -> torch.Tensor:
    r""":math:`\sum_t \log\pi_\theta(x_{t-1} \mid x_t, c)` of each recorded trajectory under ``policy``: ``(B,)``."""
    return current_log_probs(policy, samples).sum(dim=1)  # (B, T) -> (B,)


def assert_moved_with_advantages(before: torch.Tensor, after: torch.Tensor, advantages: torch.Tensor) -> None:
    """Each trajectory's score moved in the direction of the sign of its advantage, by more than rounding."""
    change = after - before  # (B,)
    assert bool((advantages != 0).all()), advantages
    tolerance = 1e-5 * before.abs().clamp(min=1.0)  # float32 sums over the latent dims
    assert bool((change.abs() > tolerance).all()), (change, tolerance)
    assert torch.equal(change.sign(), advantages.sign()), (change, advantages)


# ------------------------------------------------------------------------------------------ policy gradients
@pytest.mark.parametrize("name", ["reinforce", "ddpo", "dpok", "loop"])
def test_one_update_raises_the_log_prob_of_positive_advantages_and_lowers_negative(env, name):
    """A hand-made batch of two trajectories rewarded 1 and 0: the agent's advantages are (+, -), and after one
    update the first trajectory's log-prob has risen and the second's fallen.

    Catches (each applied by hand): REINFORCE's loss with its sign flipped; PPO's loss as ``+objective`` or its
    log-ratio as ``old - new`` (DDPO, LOOP, DPOK); DDPO's advantage negated; the batch normalisation as
    ``mean - r``; LOOP's advantage as ``baseline - r``, or its leave-one-out baseline as ``sum + r``; the new
    log-prob detached (REINFORCE, DDPO, PPO's ratio, DPOK), or old and new swapped in the DDPO, LOOP or DPOK call
    (which detaches the new one): nothing trains.
    """
    agent = make_agent(name, env, one_update_config())
    try:
        samples = with_rewards(agent.collect()[0], HIGH_LOW)
        advantages = agent.advantages(samples)
        assert advantages[0] > 0 > advantages[1], advantages
        before = trajectory_log_probs(agent.policy, samples)
        agent.update(samples, advantages)
        assert_moved_with_advantages(before, trajectory_log_probs(agent.policy, samples), advantages)
    finally:
        agent.close()


def test_reinforce_without_baseline_scales_by_the_reward_std_only(env):
    """``reinforce_baseline=False``: :math:`A = r / \\sigma(r)`, so rewards (2, -1) give advantages of the same signs
    and the update follows them.

    Catches (by hand): ``-r / std``; REINFORCE's loss with its sign flipped; its log-prob detached. The values are
    checked, so a baseline left in (same signs, other values) fails too. (mutmut:) ``std - 1e-6``, which turns equal
    rewards' advantages negative."""
    agent = make_agent("reinforce", env, one_update_config(reinforce_baseline=False))
    try:
        samples = with_rewards(agent.collect()[0], torch.tensor([2.0, -1.0]))
        advantages = agent.advantages(samples)
        torch.testing.assert_close(advantages, torch.tensor([2.0, -1.0]) / 1.5)  # population std of (2, -1): 1.5
        # equal rewards have std 0: r / (0 + 1e-6), clipped to adv_clip_max, keeps the reward's sign
        equal = agent.advantages(with_rewards(samples, torch.tensor([0.5, 0.5])))
        torch.testing.assert_close(equal, torch.full((2,), agent.config.adv_clip_max))
        before = trajectory_log_probs(agent.policy, samples)
        agent.update(samples, advantages)
        assert_moved_with_advantages(before, trajectory_log_probs(agent.policy, samples), advantages)
    finally:
        agent.close()


def test_reinforce_importance_weight_is_a_truncated_constant():
    r"""REINFORCE's loss :math:`-\frac1M\sum w A \log\pi_\theta` with :math:`w = \min(\pi_\theta/\pi_{old}, 1 +
    \epsilon)` detached: its gradient in :math:`\log\pi_\theta` is exactly :math:`-wA/M` (hand-computed).

    Catches (by hand): the weight not detached (the gradient gains :math:`-wA\log\pi/M`); old and new log-probs
    swapped in the weight (:math:`1/w`); the loss's sign flipped; the log-prob detached. (The second ratio, 2, is
    above the truncation, so a dropped or misplaced truncation changes the expected gradient too.)"""
    log_probs = torch.tensor([-3.0, -2.0, -1.0], requires_grad=True)
    old = log_probs.detach() - torch.log(torch.tensor([1.1, 2.0, 0.5]))  # ratios 1.1, 2 (truncated to 1.2), 0.5
    advantages = torch.tensor([1.0, -1.0, 2.0])
    batch = StepBatch(*(torch.zeros(3),) * 4, old_log_probs=old, advantages=advantages, relabeled=torch.zeros(3))
    step = PolicyStep(torch.zeros(3), log_probs, torch.zeros(3), torch.ones(3), torch.ones(3, dtype=torch.bool))
    agent = SimpleNamespace(config=AgentConfig(clip_range=0.2))
    ReinforceAgent.step_loss(agent, batch, step).loss.backward()
    weights = torch.tensor([1.1, 1.2, 0.5])
    torch.testing.assert_close(log_probs.grad, -weights * advantages / 3)


@pytest.mark.parametrize("agent_class", [DDPOAgent, LOOPAgent])
def test_ppo_agents_use_their_configured_clip_range_and_dual_clip(agent_class):
    r"""DDPO's and LOOP's step loss is PPO's clipped loss at the config's ``clip_range`` 0.1 and ``dual_clip`` 2,
    hand-computed (:math:`L = -\frac13\sum_i \min(\rho_i A_i, \mathrm{clip}(\rho_i) A_i)`, dual-clipped):

    - row 0, :math:`\rho = e^{0.15} = 1.162`, :math:`A = 1`: clipped to :math:`1 + 0.1`: 1.1;
    - row 1, :math:`\rho = e^{10}`, :math:`A = -1`: :math:`-e^{10}`, bounded by the dual clip at -2;
    - row 2, :math:`\rho = e^{-0.15} = 0.861`, :math:`A = -1`: :math:`\min(-0.861, -0.9) = -0.9`;

    so :math:`L = -(1.1 - 2 - 0.9) / 3 = 0.6`. The defaults (0.2, 3) would give 1.235.

    Catches (mutmut): the dual clip dropped (row 1 is then :math:`-e^{10}`), the dual clip passed as the clip
    range, the config's clip range ignored."""
    log_probs = torch.tensor([-100.0, -50.0, -20.0])
    old = log_probs - torch.tensor([0.15, 10.0, -0.15])
    batch = StepBatch(
        *(torch.zeros(3),) * 4, old_log_probs=old, advantages=torch.tensor([1.0, -1.0, -1.0]), relabeled=torch.zeros(3)
    )
    step = PolicyStep(torch.zeros(3), log_probs, torch.zeros(3), torch.ones(3), torch.ones(3, dtype=torch.bool))
    agent = SimpleNamespace(config=AgentConfig(clip_range=0.1, dual_clip=2.0))
    loss = agent_class.step_loss(agent, batch, step).loss
    torch.testing.assert_close(loss, torch.tensor(0.6))


def test_dpok_step_loss_by_hand():
    r"""DPOK's step loss, hand-computed on two rows, one latent dim, :math:`\sigma_t = 1`, with
    :math:`\alpha = 2`, :math:`\beta = 0.5`, clip range 0.1, dual clip 2:

    - per-step advantages :math:`\alpha (\tilde r - V)` with :math:`\tilde r = (1, -1)`, :math:`V = (0.5, 0.5)`:
      :math:`(1, -3)`;
    - PPO on them, ratios :math:`e^{0.15}` and :math:`e^{10}`: row 0 clipped to :math:`1.1 \times 1`, row 1 bounded by
      the dual clip at :math:`2 \times -3 = -6`: policy loss :math:`-(1.1 - 6) / 2 = 2.45`;
    - KL to the reference (mean 0): :math:`\mu^2 / 2\sigma^2` for :math:`\mu = (1, 2)`: (0.5, 2), mean 1.25;
    - the value's regression on :math:`\tilde r`: :math:`((0.5 - 1)^2 + (0.5 + 1)^2) / 2 = 1.25`;

    loss :math:`2.45 + 0.5 \times 1.25 + 1.25 = 4.325`, and the three terms are logged under their names.

    Catches (mutmut): :math:`\alpha / (\tilde r - V)` for :math:`\alpha (\tilde r - V)` (the same signs, so the
    direction test passes it), the dual clip dropped or passed as the clip range, the metric names changed."""
    log_probs = torch.tensor([-100.0, -50.0])
    old = log_probs - torch.tensor([0.15, 10.0])
    rewards = torch.tensor([1.0, -1.0])  # the normalised rewards r~, DPOK's batch advantages
    batch = StepBatch(
        latents=torch.zeros(2, 1, 1, 1),
        next_latents=torch.zeros(2, 1, 1, 1),
        timesteps=torch.zeros(2, dtype=torch.long),
        prompt_embeddings=torch.zeros(2, 1, 1),
        old_log_probs=old,
        advantages=rewards,
        relabeled=torch.zeros(2, dtype=torch.bool),
    )
    policy_mean = torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1)  # (M, C, H, W)
    step = PolicyStep(torch.zeros(2, 1, 1, 1), log_probs, policy_mean, torch.ones(2), torch.ones(2, dtype=torch.bool))
    reference = SimpleNamespace(mean=torch.zeros(2, 1, 1, 1))
    config = AgentConfig(reward_alpha=2.0, kl_beta=0.5, clip_range=0.1, dual_clip=2.0, adv_clip_max=5.0)
    agent = SimpleNamespace(
        config=config,
        value=lambda latents, timesteps, embeddings: torch.tensor([0.5, 0.5]),
        policy=SimpleNamespace(reference=lambda latents, timesteps, embeddings, action: reference),
    )
    result = DPOKAgent.step_loss(agent, batch, step)
    torch.testing.assert_close(result.loss, torch.tensor(4.325))
    assert set(result.metrics) == {"policy_loss", "kl_to_reference", "value_loss"}
    for name, expected in (("policy_loss", 2.45), ("kl_to_reference", 1.25), ("value_loss", 1.25)):
        torch.testing.assert_close(result.metrics[name], torch.tensor(expected))


def test_relabel_needs_one_prompt_per_trajectory():
    """Catches (mutmut): the error message dropped."""
    with pytest.raises(ValueError, match="got 1 prompts for 2 trajectories"):
        relabel(None, [object(), object()], ["a red circle."])


def test_loop_advantage_is_the_reward_minus_the_mean_of_the_others(env):
    """LOOP on two prompts sampled twice each: :math:`A_i = (r_i - r_j) / \\sigma(r)` within each pair.

    Catches (by hand): ``baseline - r``; the leave-one-out baseline as ``(sum + r) / (K - 1)``. The values are
    checked, so a baseline over the whole batch instead of the prompt's group, or another scale, fails too.
    (mutmut:) the scale's ``std - 1e-6``."""
    agent = make_agent("loop", env, one_update_config())
    try:
        batch = agent.collect()[0]
        samples = Trajectories.cat([batch, batch])  # relabeled below as (a, a, b, b): two prompts, twice each
        samples = dataclasses.replace(samples, prompts=["a", "a", "b", "b"])
        rewards = torch.tensor([3.0, 1.0, 0.0, 4.0])
        advantages = agent.advantages(with_rewards(samples, rewards))
        std = rewards.std(unbiased=False)
        torch.testing.assert_close(advantages, torch.tensor([2.0, -2.0, -4.0, 4.0]) / std)
        # rewards 2e-6 apart: std 1e-6, so the scale std + 1e-6 = 2e-6 gives advantages of +-1 (not a division by ~0)
        nearly_equal = agent.advantages(with_rewards(samples, torch.tensor([0.0, 2e-6, 0.0, 2e-6])))
        torch.testing.assert_close(nearly_equal, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-3, rtol=0)
    finally:
        agent.close()


# ------------------------------------------------------------------------------------------ DPOK
def perturb_lora(policy, seed: int, scale: float) -> None:
    """Move the policy off the pretrained model: LoRA's B (zero at init) set to small random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in policy.named_trainable_parameters().items():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def test_dpok_without_the_reward_term_pulls_the_policy_back_to_the_reference(env):
    """``reward_alpha=0``: DPOK's loss is :math:`\\beta\\,\\mathrm{KL}` (plus the value loss, which does not touch
    the policy); from a policy moved off the pretrained model, one update lowers the KL of every trajectory.

    Catches (by hand): the KL term's sign flipped (the KL rises); the KL term multiplied by 0, or the policy mean
    detached in it (nothing moves)."""
    agent = make_agent("dpok", env, one_update_config(reward_alpha=0.0, kl_beta=1.0))
    try:
        samples = agent.collect()[0]
        perturb_lora(agent.policy, seed=0, scale=0.05)
        before = agent.policy.kl_to_reference(samples)  # (B,): sum_t KL(pi_theta || pi_pre)
        assert bool((before > 0).all()), before
        agent.update(samples, agent.advantages(samples))
        after = agent.policy.kl_to_reference(samples)
        assert bool((after < 0.99 * before).all()), (before, after)
    finally:
        agent.close()


def test_dpok_subtracts_the_value_baseline(env):
    r"""DPOK's per-step advantage is :math:`\alpha(\tilde r - V(x_t, c, t))`: with both trajectories' normalised
    rewards raised by the same amount and :math:`V` trained on the raised ones, the one above the baseline still
    rises and the one below still falls.

    Here the value net's last layer is set so that :math:`V \equiv 2` and the advantages are :math:`\tilde r + 2`
    with :math:`\tilde r = (1, -1)`, i.e. (3, 1): without the baseline both would rise.

    Catches (by hand): the baseline added instead of subtracted, or multiplied by 0 (both log-probs rise); old and
    new log-probs swapped in DPOK's PPO call, or the log-prob detached (nothing moves)."""
    agent = make_agent("dpok", env, one_update_config())
    try:
        samples = with_rewards(agent.collect()[0], HIGH_LOW)
        with torch.no_grad():
            last = agent.value.net[-1]
            last.weight.zero_()
            last.bias.fill_(2.0)  # V = 2 whatever the state
        advantages = agent.advantages(samples) + 2.0  # (3, 1)
        before = trajectory_log_probs(agent.policy, samples)
        agent.update(samples, advantages)
        assert_moved_with_advantages(before, trajectory_log_probs(agent.policy, samples), advantages - 2.0)
    finally:
        agent.close()


def test_dpok_value_network_regresses_on_the_normalised_reward(env):
    """One update moves :math:`V(x_t, c, t)` towards :math:`\\tilde r` at the trained states.

    Catches (by hand): the value loss multiplied by 0 (V does not move); the value target negated (V moves away).
    """
    agent = make_agent("dpok", env, one_update_config())
    try:
        samples = with_rewards(agent.collect()[0], HIGH_LOW)
        advantages = agent.advantages(samples)  # (1, -1)

        def value_error() -> torch.Tensor:
            with torch.no_grad():
                rows = []
                for j in range(samples.latents.shape[1]):
                    timesteps = samples.timesteps[j].repeat(len(samples))
                    rows.append(agent.value(samples.latents[:, j], timesteps, samples.prompt_embeddings) - advantages)
                return torch.stack(rows).pow(2).mean()

        before = value_error()
        agent.update(samples, advantages)
        assert value_error() < 0.99 * before
    finally:
        agent.close()


def test_dpok_a_step_the_loss_scaler_skips_moves_neither_network(env):
    """With float16's loss scaler, an overflowed gradient (inf in the policy's) skips the whole step: neither the
    policy nor the value network V moves, and the scale is halved; the next, finite step moves both.

    Catches: V's optimiser stepped after a skipped policy step (issue 30: it was)."""
    agent = make_agent("dpok", env, one_update_config())
    try:
        agent.scaler = torch.amp.GradScaler("cpu", init_scale=4.0, enabled=True)  # as a float16 model has
        agent.scaler.scale(torch.tensor(1.0))  # the scaler starts with the first scaled loss

        def set_gradients(policy_value: float) -> None:
            for parameter in agent.parameters:
                parameter.grad = torch.full_like(parameter, policy_value)
            for parameter in agent.value.parameters():
                parameter.grad = torch.ones_like(parameter)  # finite

        def snapshot() -> list[torch.Tensor]:
            return [p.detach().clone() for p in [*agent.parameters, *agent.value.parameters()]]

        before = snapshot()
        set_gradients(float("inf"))
        agent.optimizer_step()
        assert all(torch.equal(a, b) for a, b in zip(before, snapshot(), strict=True))
        assert agent.scaler.get_scale() == 2.0
        assert all(p.grad is None for p in [*agent.parameters, *agent.value.parameters()])
        set_gradients(1.0)
        agent.optimizer_step()
        after = snapshot()
        moved = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
        assert all(moved[: len(agent.parameters)]) and all(moved[len(agent.parameters) :])
    finally:
        agent.close()


def test_dpok_clips_the_value_networks_gradients_by_hand(env):
    r"""V's gradients are clipped to ``max_grad_norm`` on their own: every gradient entry 3 over :math:`n` entries
    has norm :math:`3\sqrt n`, clipped to 0.5 each entry becomes :math:`0.5/\sqrt n`; with plain SGD at lr 1 each
    weight moves by exactly that.

    Catches: V's gradients not clipped (issue 30: each weight moved by 3)."""
    agent = make_agent("dpok", env, one_update_config(max_grad_norm=0.5))
    try:
        agent.value_optimizer = torch.optim.SGD(agent.value.parameters(), lr=1.0)
        parameters = list(agent.value.parameters())
        count = sum(p.numel() for p in parameters)
        before = [p.detach().clone() for p in parameters]
        for parameter in parameters:
            parameter.grad = torch.full_like(parameter, 3.0)
        agent.optimizer_step()
        expected = 0.5 / count**0.5
        for old, parameter in zip(before, parameters, strict=True):
            torch.testing.assert_close(old - parameter.detach(), torch.full_like(old, expected), rtol=1e-4, atol=1e-7)
    finally:
        agent.close()


# ------------------------------------------------------------------------------------------ RWR
def diffusion_losses(agent, samples: Trajectories, generator_state: torch.Tensor) -> torch.Tensor:
    r"""Each sample's unweighted diffusion loss :math:`\lVert f_\theta(x_t, t, c) - y_t\rVert^2` (mean over latent
    dims) on its final latent, ``(B,)``, at the (t, noise) draws of the update that starts from ``generator_state``
    (RWR's update with one minibatch and one inner epoch): the "same actions" of the policy-gradient tests,
    re-scored. Computed here from the policy's prediction, not by the agent's ``diffusion_loss`` under test."""
    from agents.algorithms.rwr import diffusion_target

    scheduler, generator = agent.policy.scheduler, torch.Generator().set_state(generator_state)
    order = torch.randperm(len(samples), generator=generator)  # (N,): the update's one minibatch
    clean = samples.next_latents[order, -1]  # (N, C, H, W): x_0
    total = torch.zeros(len(samples))
    with torch.no_grad():
        for _ in range(agent.draws_per_trajectory(samples)):  # the update's draws, in its order
            low, high = agent.config.train_timestep_min, scheduler.config.num_train_timesteps
            timesteps = torch.randint(low, high, (len(clean),), generator=generator)  # (N,)
            noise = torch.randn(clean.shape, generator=generator)  # (N, C, H, W)
            noisy = scheduler.add_noise(clean, noise, timesteps)
            prediction = agent.policy.predict(noisy, timesteps, samples.prompt_embeddings[order])
            target = diffusion_target(scheduler, clean, noise, timesteps)
            total[order] += (prediction - target).pow(2).mean(dim=(1, 2, 3))  # (N,)
    return total


def test_rwr_signed_weights_fit_the_good_sample_and_unfit_the_bad(env):
    """RWR with ``rwr_baseline`` (weights :math:`w_i - 1`, signed): after one update the diffusion loss of the
    better sample has fallen and that of the worse one risen.

    Catches (by hand): ``1 - w`` for ``w - 1``; the loss's sign flipped (a first version that re-scored with the
    agent's own ``diffusion_loss`` missed this one: the flip cancelled); ``exp(-A / tau)``; the baseline not
    subtracted (the weights are checked to be signed); the prediction detached."""
    agent = make_agent("rwr", env, one_update_config(rwr_baseline=True, learning_rate=1e-3))
    try:
        samples = with_rewards(agent.collect()[0], HIGH_LOW)
        weights = agent.advantages(samples)
        assert weights[0] > 0 > weights[1], weights
        state = agent.generator.get_state()
        before = diffusion_losses(agent, samples, state)
        agent.update(samples, weights)
        assert_moved_with_advantages(-before, -diffusion_losses(agent, samples, state), weights)
    finally:
        agent.close()


# ------------------------------------------------------------------------------------------ HERD
@pytest.fixture(scope="module")
def shapes_env():
    """The Shapes world with its prompt-dependent proxy reward (a relabeled goal changes the reward), 3 steps."""
    from diffusion_gym.shapes import STANDARD_PROMPT

    return EnvConfig(reward="shapes-clip", prompts=(STANDARD_PROMPT,), num_inference_steps=3).make(num_envs=2)


def test_a_relabeled_reward_is_the_reward_of_the_image_for_its_sentence_alone(shapes_env):
    """HERD's refill relabels each kept trajectory with one sentence of its prompt; its reward is the env's
    ``compute_reward`` of the same image for that sentence alone, not for the original prompt.

    Catches (by hand): the reward computed against the original desired goal, or the original reward kept; the
    original prompt's embedding kept. (mutmut:) the original desired goal kept."""
    agent = make_agent("herd", shapes_env, one_update_config())
    try:
        diffusion = shapes_env.unwrapped.diffusion
        new = agent.collect()[0]
        agent.relabeler.refill(new, agent.rng, diffusion)
        (replay,) = agent.relabeler.history
        assert len(replay) == len(new) and bool(replay.is_relabeled.all())
        for row in range(len(replay)):
            source = next(i for i in range(len(new)) if torch.equal(new.achieved_goals[i], replay.achieved_goals[row]))
            sentence = replay.prompts[row]
            assert sentence in split_sentences(new.prompts[source]) and sentence != new.prompts[source]
            alone = diffusion.compute_reward(
                new.achieved_goals[source : source + 1], diffusion.codec.encode([sentence])
            )
            # shapes-clip is 100 x a cosine; batched and alone, its float32 CLIP differs in the last bits
            assert replay.rewards[row].item() == pytest.approx(alone.item(), abs=1e-3)
            assert abs(replay.rewards[row].item() - new.rewards[source].item()) > 0.1  # the test can tell them apart
            # the policy is trained on the relabeled trajectory with the sentence's embedding
            torch.testing.assert_close(replay.prompt_embeddings[row], diffusion.encode_prompts([sentence])[0])
            assert not torch.allclose(replay.prompt_embeddings[row], new.prompt_embeddings[source])
            # and its desired goal (what the env's compute_reward reads) is the sentence's
            assert diffusion.codec.decode_prompts(replay.desired_goals[row : row + 1]) == [sentence]
    finally:
        agent.close()


def test_a_relabeled_trajectory_is_weighted_against_its_behaviour_log_prob(shapes_env, monkeypatch):
    r"""In the epoch that replays a relabeled trajectory, its PPO ratio's denominator is the log-prob it was
    sampled with, :math:`\log\pi_{old}(x_{t-1} \mid x_t, c)` under the **original** prompt (the update's
    ``old_log_probs``), not a log-prob under the relabeled sentence.

    Catches (by hand): the behaviour log-probs rescored under the new sentence whatever
    ``herd_off_policy_correction`` says (the uncorrected variant always)."""
    agent = make_agent("herd", shapes_env, one_update_config())
    seen: list[StepBatch] = []
    real_step_loss = agent.step_loss
    monkeypatch.setattr(agent, "step_loss", lambda batch, step: seen.append(batch) or real_step_loss(batch, step))
    try:
        agent.train_epoch()  # samples, trains, relabels into the buffer
        (replay,) = agent.relabeler.history
        seen.clear()
        agent.train_epoch()  # trains on new trajectories and the replay
        relabeled_rows = [
            (b.next_latents[m], b.old_log_probs[m]) for b in seen for m in torch.nonzero(b.relabeled)[:, 0]
        ]
        assert relabeled_rows
        under_sentence = current_log_probs(agent.policy, replay)  # (B, T): what the uncorrected variant would use
        for action, old_log_prob in relabeled_rows:
            row, step = next(
                (i, j)
                for i in range(len(replay))
                for j in range(replay.next_latents.shape[1])
                if torch.equal(replay.next_latents[i, j], action)
            )
            assert old_log_prob.item() == replay.log_probs[row, step].item()  # the behaviour log-prob under c
            assert abs(old_log_prob.item() - under_sentence[row, step].item()) > 1e-3
    finally:
        agent.close()


def test_herd_update_raises_the_log_prob_of_a_good_relabeled_trajectory_under_its_sentence(shapes_env):
    """HERD composed with DDPO, trained on a batch and its relabeled copy: with hand-made rewards the relabeled
    trajectories' log-probs under their new sentences move with their advantages.

    Without the off-policy correction (the paper's variant), so that the replay is on-policy: on the Shapes world
    an action is far less likely under one sentence than under the whole prompt (log-ratios of -1e4 and below
    here), so with the correction every replayed ratio is clipped and the update leaves them alone, by design.

    Catches (by hand): PPO's loss as ``+objective``; DDPO's advantage negated; DDPO's log-prob detached (as the
    test above, here on relabeled trajectories). The relabeled embedding itself is checked by the relabel test.
    """
    config = one_update_config(train_batch_size=4, herd_off_policy_correction=False)
    agent = make_agent("herd", shapes_env, config)
    try:
        diffusion = shapes_env.unwrapped.diffusion
        new = agent.collect()[0]
        agent.relabeler.refill(new, agent.rng, diffusion)
        replay = agent.relabeler.replay(agent.rng, agent.policy)
        train = Trajectories.cat([with_rewards(new, torch.tensor([0.5, 0.5])), with_rewards(replay, HIGH_LOW)])
        advantages = agent.advantages(train)  # (0, 0, +, -)
        before = trajectory_log_probs(agent.policy, replay)
        agent.update(train, advantages)
        assert_moved_with_advantages(before, trajectory_log_probs(agent.policy, replay), advantages[2:])
    finally:
        agent.close()
