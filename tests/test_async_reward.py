"""Asynchronous reward scoring (issue 5): the vector env's ``step_async``/``step_wait`` and ``--async-reward``.

On the tiny random pipeline with a world file (gold: JPEG compressibility; proxy: the env's reward), and a
registered test reward that records which thread scored what, and can hold its first call until the policy has
sampled the next batch (an ordering handshake with a deadlock guard, no timing).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading

import gymnasium as gym
import pytest
import torch
from gymnasium.error import AlreadyPendingCallError, ClosedEnvironmentError, NoAsyncCallError

import diffusion_gym
from agents import AgentConfig, make_agent
from diffusion_gym.rewards import register_reward, registered_rewards, registry

PROMPTS = ["A cat. A dog on a mat.", "A red box. A blue sky."]
STEPS = 3
REWARD = "test-async-recorder"
TIMING_KEYS = {"epoch_seconds", "samples_per_second"}
GUARD_SECONDS = 60  # only bounds a hang if the overlap is missing; no assertion depends on time


class RecordingReward:
    """The mean pixel of each image, ``(B,)``; logs ``(event, thread name)`` for every call.

    ``error``: raised by every call. ``hold_first``: the first call waits until :meth:`release` (the policy sampled
    the next batch) and records whether it was released.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.error: Exception | None = None
        self.hold_first = False
        self.started = threading.Event()  # the first call is running
        self.released = threading.Event()
        self._lock = threading.Lock()

    def log(self, event: str) -> None:
        with self._lock:
            self.events.append((event, threading.current_thread().name))

    def release(self) -> None:
        self.released.set()

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        first = not self.started.is_set()
        self.started.set()
        self.log("reward-start")
        if self.error is not None:
            raise self.error
        if first and self.hold_first:
            self.log("reward-released" if self.released.wait(GUARD_SECONDS) else "reward-never-released")
        self.log("reward-end")
        return images.mean(dim=(1, 2, 3)).float().cpu()


RECORDER = RecordingReward()


@pytest.fixture(autouse=True, scope="module")
def registered_recorder():
    """``REWARD`` in a copy of the registry, restored after this module (other tests see the usual rewards)."""
    registered_rewards()  # the built-in rewards first
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
        patch.setattr(registry, "_CACHE", dict(registry._CACHE))
        register_reward(REWARD, lambda device: RECORDER, description="test: mean pixel, recorded", uses_prompt=False)
        yield


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def recorder():
    RECORDER.reset()
    yield RECORDER
    RECORDER.reset()


@pytest.fixture(scope="module")
def world(tiny_pipeline, tmp_path_factory) -> str:
    """The tiny pipeline with world metadata: a gold score of its own, and the env's reward as the proxy."""
    folder = tmp_path_factory.mktemp("world") / "tiny-async-world"
    shutil.copytree(tiny_pipeline, folder)
    (folder / "diffusion_gym.json").write_text(
        json.dumps({"gold_reward": "jpeg-compressibility", "proxy_reward": REWARD})
    )
    return str(folder)


def make_vec(world: str):
    return gym.make_vec(
        diffusion_gym.ENV_ID,
        num_envs=2,
        vectorization_mode="vector_entry_point",
        model=world,
        reward=REWARD,
        prompts=PROMPTS,
        num_inference_steps=STEPS,
        latent_bound=1e4,
        array_backend="torch",
    ).unwrapped


@pytest.fixture(scope="module")
def env(world):
    env = make_vec(world)
    yield env
    env.close()


def fixed_actions(env, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(env.num_envs, *env.diffusion.latent_shape, generator=generator) for _ in range(STEPS + 1)]


def split_step(env, action):
    env.step_async(action)
    return env.step_wait()


def assert_same_step(a, b) -> None:
    (obs_a, reward_a, term_a, trunc_a, info_a), (obs_b, reward_b, term_b, trunc_b, info_b) = a, b
    assert obs_a.keys() == obs_b.keys()
    assert all(torch.equal(obs_a[key], obs_b[key]) for key in obs_a)
    assert torch.equal(reward_a, reward_b) and reward_a.dtype == reward_b.dtype == torch.float32
    assert torch.equal(term_a, term_b) and torch.equal(trunc_a, trunc_b)
    assert info_a.keys() == info_b.keys()
    for key, value in info_a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, info_b[key]), key
        else:
            assert list(value) == list(info_b[key]), key


# ------------------------------------------------------------------------------------------ the vector env
def test_split_step_equals_step(env, recorder):
    actions = fixed_actions(env)
    runs = {}
    for mode, take_step in (("step", env.step), ("split", lambda action: split_step(env, action))):
        recorder.reset()
        env.reset(seed=5)
        runs[mode] = [take_step(action) for action in actions]  # T steps, then the NEXT_STEP autoreset
        runs[mode + "-threads"] = {thread for event, thread in recorder.events if event == "reward-start"}
    for step, split in zip(runs["step"], runs["split"], strict=True):
        assert_same_step(step, split)
    _, rewards, terminated, _, info = runs["split"][STEPS - 1]
    assert bool(terminated.all()) and {"gold_score", "proxy_score", "final_images", "_gold_score"} <= set(info)
    assert torch.equal(info["proxy_score"], rewards)  # the proxy is the env's reward: reused, not rescored
    assert not torch.equal(info["gold_score"], rewards)
    assert torch.equal(rewards, info["final_images"].mean(dim=(1, 2, 3)))
    assert runs["step-threads"] == {threading.current_thread().name}  # step scores on the caller's thread
    (worker,) = runs["split-threads"]
    assert worker.startswith("reward-scorer")
    assert not bool(runs["split"][STEPS][2].any()) and torch.all(runs["split"][STEPS][1] == 0)  # autoreset


def test_split_step_call_order_errors(env):
    actions = fixed_actions(env)
    env.reset(seed=0)
    with pytest.raises(NoAsyncCallError, match="without any prior call to `step_async`"):
        env.step_wait()
    env.step_async(actions[0])
    for call in (lambda: env.step_async(actions[1]), lambda: env.step(actions[1]), lambda: env.reset(seed=0)):
        with pytest.raises(AlreadyPendingCallError, match="pending call to `step`"):
            call()
    env.step_wait()  # the pending step is still there and completes
    with pytest.raises(NoAsyncCallError):
        env.step_wait()
    for action in actions[1:STEPS]:
        env.step_async(action)
        with pytest.raises(AlreadyPendingCallError):
            env.step_async(action)
        _, _, terminated, _, _ = env.step_wait()
    assert bool(terminated.all())


def test_a_reward_error_surfaces_from_step_wait(env, recorder):
    actions = fixed_actions(env)
    env.reset(seed=1)
    for action in actions[: STEPS - 1]:
        split_step(env, action)
    recorder.error = error = ValueError("reward model exploded")
    env.step_async(actions[STEPS - 1])  # returns: the reward runs on the worker
    with pytest.raises(ValueError, match="exploded") as raised:
        env.step_wait()
    assert raised.value is error
    recorder.error = None
    _, rewards, terminated, _, _ = split_step(env, actions[0])  # the episodes stayed terminated: autoreset
    assert not bool(terminated.any()) and torch.all(rewards == 0)
    for action in actions[:STEPS]:
        _, rewards, terminated, _, _ = split_step(env, action)
    assert bool(terminated.all()) and rewards.shape == (2,)  # the worker survived the error


def test_close_stops_the_scorer(world):
    before = set(threading.enumerate())
    env = make_vec(world)
    actions = fixed_actions(env)
    env.reset(seed=2)
    for action in actions[: STEPS - 1]:
        split_step(env, action)
    env.step_async(actions[STEPS - 1])
    scorer = env._scorer
    assert scorer is not None and not scorer.closed
    assert any(t.name.startswith("reward-scorer") for t in set(threading.enumerate()) - before)
    env.close()  # with a step pending
    assert scorer.closed and env._scorer is None
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("reward-scorer")]
    with pytest.raises(NoAsyncCallError):
        env.step_wait()  # the pending step was dropped
    with pytest.raises(ClosedEnvironmentError):
        env.step_async(actions[0])


def test_sibling_env_shares_models_and_image_cache(env, monkeypatch):
    sibling = env.diffusion.new_vector_env(env.num_envs)
    try:
        assert sibling is not env and sibling.mdp is not env.mdp and sibling.mdp.config == env.mdp.config
        assert sibling.diffusion.model is env.diffusion.model and sibling.num_envs == env.num_envs
        observation, _ = sibling.reset(seed=3)
        for action in fixed_actions(sibling)[:STEPS]:
            observation, rewards, *_ = split_step(sibling, action)
        decodes = []
        model = env.diffusion.model
        original = model.decode_latents
        monkeypatch.setattr(model, "decode_latents", lambda latents: decodes.append(1) or original(latents))
        relabeled = env.compute_reward(observation["achieved_goal"], observation["desired_goal"])
        assert torch.equal(relabeled, rewards.cpu())
        assert not decodes  # the parent env found the sibling's images in the shared cache
    finally:
        sibling.close()


# ------------------------------------------------------------------------------------------ the agents
def tiny_config(**overrides) -> AgentConfig:
    defaults = {"batch_size": 2, "batches_per_epoch": 2, "lora_rank": 2, "loop_k": 2, "seed": 0}
    return AgentConfig(**{**defaults, **overrides})


def assert_same_trajectories(a, b) -> None:
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), field.name
        else:
            assert x == y, field.name


@pytest.mark.parametrize("name, overrides", [("ddpo", {"batches_per_epoch": 3}), ("herd", {})])
def test_async_reward_gives_identical_training(env, recorder, name, overrides):
    runs = {}
    for async_reward in (False, True):
        recorder.reset()
        agent = make_agent(name, env, tiny_config(async_reward=async_reward, **overrides))
        try:
            batches = agent.collect()
            results = [agent.train_epoch() for _ in range(2)]  # HERD: the 2nd epoch replays relabeled samples
            parameters = {k: v.detach().clone() for k, v in agent.policy.named_trainable_parameters().items()}
            sibling = agent._sibling_env
        finally:
            agent.close()
        assert (sibling is not None) == async_reward and (sibling is None or sibling.closed)
        threads = {thread for event, thread in recorder.events if event == "reward-start"}
        runs[async_reward] = batches, results, parameters, threads
    (sync_batches, sync_results, sync_parameters, sync_threads) = runs[False]
    (async_batches, async_results, async_parameters, async_threads) = runs[True]
    assert sync_threads == {threading.current_thread().name}
    scorers = {thread for thread in async_threads if thread.startswith("reward-scorer")}
    assert scorers and async_threads - scorers <= sync_threads  # the rollouts' rewards; HERD relabels on this thread
    if name != "herd":
        assert async_threads == scorers
    assert len(sync_batches) == len(async_batches) == tiny_config(**overrides).batches_per_epoch
    for a, b in zip(sync_batches, async_batches, strict=True):
        assert_same_trajectories(a, b)
    for a, b in zip(sync_results, async_results, strict=True):
        assert {k: v for k, v in a.metrics.items() if k not in TIMING_KEYS} == {
            k: v for k, v in b.metrics.items() if k not in TIMING_KEYS
        }
        assert torch.equal(a.final_images, b.final_images) and a.prompts == b.prompts
    if name == "herd":
        assert "herd_relabeled_reward_mean" in async_results[1].metrics
    assert sync_parameters.keys() == async_parameters.keys()
    assert all(torch.equal(sync_parameters[k], async_parameters[k]) for k in sync_parameters)


def test_batch_reward_is_scored_while_the_next_batch_is_sampled(env, recorder):
    """Batch 0's reward (held on the worker) is released by the policy sampling batch 1 on the sibling env, and
    batch 1's sampling waits for batch 0's reward to have started: the events can only interleave one way."""
    recorder.hold_first = True
    agent = make_agent("ddpo", env, tiny_config(async_reward=True))
    sample, calls = agent.policy.sample, []

    def recording_sample(observation, generator):
        calls.append(observation["latent"].data_ptr())
        if len(calls) == STEPS + 1:  # the first step of batch 1
            started = recorder.started.wait(GUARD_SECONDS)
            recorder.log("sample-batch-1" if started else "sample-batch-1-before-any-reward")
            recorder.release()
        return sample(observation, generator)

    agent.policy.sample = recording_sample
    try:
        batches = agent.collect()
    finally:
        agent.close()
    events = [event for event, _ in recorder.events]
    assert events[:4] == ["reward-start", "sample-batch-1", "reward-released", "reward-end"], recorder.events
    assert recorder.events[0][1].startswith("reward-scorer") and recorder.events[1][1] == "MainThread"
    assert events.count("reward-start") == 2 and len(calls) == 2 * STEPS
    assert len(batches) == 2 and all(torch.isfinite(batch.rewards).all() for batch in batches)


# ------------------------------------------------------------------------------------------ the CLI
def test_cli_flag_parses_and_a_tiny_run_works(world, tmp_path):
    from agents import run_command as run

    folder = tmp_path / "run"
    flags = [
        *(
            "--model",
            world,
            "--reward",
            REWARD,
            "--prompts",
            "a red circle on the left",
            "--eval-prompts",
            "a small blue square",
        ),
        *("--num-inference-steps", str(STEPS), "--batch-size", "2", "--batches-per-epoch", "2", "--lora-rank", "2"),
        *("--eval-samples", "2", "--latent-bound", "1e4", "--eval-every", "100", "--output-dir", str(folder)),
    ]
    assert run.parse_args(["--agent", "ddpo", *flags]).config.async_reward is False
    settings = run.parse_args(["--agent", "ddpo", "--async-reward", *flags])
    assert settings.config.async_reward is True and "--async-reward" in settings.command
    assert run.main(["--agent", "ddpo", "--epochs", "1", "--async-reward", *flags]) == 0
    (record,) = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert record["global_step"] == 4 and {"reward_mean", "gold_score", "proxy_score"} <= set(record)
    results = json.loads((folder / "results.json").read_text())
    assert results["config"]["async_reward"] is True and results["epochs_completed"] == 1


def test_an_error_mid_collect_leaves_no_step_pending(env):
    agent = make_agent("ddpo", env, tiny_config(async_reward=True))
    sample, calls = agent.policy.sample, []

    def failing_sample(observation, generator):
        calls.append(1)
        if len(calls) == STEPS + 1:  # batch 0's reward is pending on the env; batch 1 starts on the sibling
            raise KeyboardInterrupt
        return sample(observation, generator)

    agent.policy.sample = failing_sample
    try:
        with pytest.raises(KeyboardInterrupt):
            agent.collect()
        with pytest.raises(NoAsyncCallError):
            env.step_wait()  # collect gave the pending step up
        agent.policy.sample = sample
        assert len(agent.generate(PROMPTS, seed=0).rewards) == 2  # the env resets and steps as usual
    finally:
        agent.close()
