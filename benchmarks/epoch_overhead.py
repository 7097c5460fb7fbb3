"""How close is a training epoch to the compute it contains? A benchmark, not a test.

Times, in one process, ``--epochs`` real ``agent.train_epoch()`` epochs (after one warm-up epoch) and,
alternating with them, the epoch's **bare compute**: the same model calls with the same shapes on the same
policy module (LoRA adapter included), with no env and no agent around them:

* sampling: for each of the ``batches_per_epoch`` batches and each DDIM step, the policy's guided UNet call
  (the classifier-free-guidance batch of ``2 x batch_size``) and the DDIM step, under ``no_grad``;
* training: as many (minibatch, trained timestep) pairs as ``Agent.update`` runs (``inner_epochs`` passes over
  the epoch's trajectories, HERD's replayed ones included, in minibatches of ``train_batch_size``,
  ``ceil(train_timestep_fraction x stochastic steps)`` steps each), each one forward + backward of the
  policy's log-prob on the minibatch (DPOK: plus its reference forward), then per minibatch the gradient
  clipping and AdamW step. The bare steps train on the bare sampling's own latents; the trainable parameters
  are restored afterwards, so the agent's epochs are not disturbed.

The VAE decode and reward of each batch belong to the epoch but not to the bare compute: they are timed apart
(as the env runs them: decode, reward, and the world's gold/proxy scores). The epoch is also split into the
agent's ``collect`` and ``update`` calls (timed by wrapping them) and the rest.

Prints a table of medians over the timed epochs, in wall seconds and in process CPU seconds (with
``--threads 1`` on a CPU shared with other jobs, CPU time varies less than wall time), the ratio epoch / bare
against the target (<= 1.15, on wall time; a measurement, nothing is asserted), and the peak memory: the
process's peak RSS (``ru_maxrss``, model loading included) and, on CUDA, ``torch.cuda.max_memory_allocated``.

    python benchmarks/epoch_overhead.py                                  # DDPO on the embedded Shapes world
    python benchmarks/epoch_overhead.py --agent herd --threads 1         # HERD; --threads 1 on a shared CPU
    python benchmarks/epoch_overhead.py --model tiny --steps 4 --batch-size 4 --epochs 2 --threads 1  # smoke
    python benchmarks/epoch_overhead.py --device cuda --batch-size 32    # on a GPU
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

import diffusion_gym  # noqa: E402
from agents import AGENT_NAMES, make_agent  # noqa: E402
from agents.common import Agent, AgentConfig, EpochResult  # noqa: E402
from agents.herd import HERDAgent  # noqa: E402
from agents.math import gaussian_step_kl, sample_train_timesteps  # noqa: E402
from agents.policy import DiffusionPolicy  # noqa: E402
from benchmarks.run import add_agent_config_flags, agent_config_fields  # noqa: E402
from diffusion_gym.ddim import ddim_step_coefficients  # noqa: E402
from diffusion_gym.models import build_tiny_pipeline  # noqa: E402

TARGET = 1.15  # the target: an epoch takes at most 1.15x its bare compute
TINY_REWARD = "jpeg-incompressibility"  # the tiny pipeline has no world file: no default reward or prompts
TINY_PROMPTS = [
    "A red circle on the left. A blue square on the right.",
    "A green triangle. A gray background.",
    "A yellow star at the top. A purple circle at the bottom. A white background.",
    "A blue square.",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--agent", default="ddpo", choices=AGENT_NAMES, help="the agent (default: %(default)s)")
    bench.add_argument(
        "--model",
        default="shapes",
        help="'shapes' (the embedded world), 'tiny' (a random tiny pipeline built in a temp folder), "
        "or a pipeline folder / hub id (default: %(default)s)",
    )
    bench.add_argument(
        "--reward", default=None, help=f"reward name (default: the world's; {TINY_REWARD!r} for --model tiny)"
    )
    bench.add_argument(
        "--prompts",
        default=None,
        help="prompt set name or one prompt (default: the world's; 4 fixed multi-sentence prompts for tiny)",
    )
    bench.add_argument("--steps", type=int, default=None, help="DDIM steps per episode (default: the world's)")
    bench.add_argument("--epochs", type=int, default=3, help="timed epochs, after 1 warm-up (default: %(default)s)")
    bench.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    bench.add_argument("--device", default="cpu", help="torch device of the env and the policy (default: %(default)s)")
    bench.add_argument("--dtype", default="float32", help="dtype of the frozen model (default: %(default)s)")
    bench.add_argument(
        "--latent-bound",
        type=float,
        default=None,
        help="the env's latent bound (default: the env's 50; 1e4 for --model tiny, as a random UNet drifts)",
    )
    add_agent_config_flags(parser.add_argument_group("agent (agents.common.AgentConfig; its defaults)"))
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    return args


# ============================================================================================== timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds
    cpu: float  # process CPU seconds (all threads): on a shared CPU, less sensitive to other jobs than wall time

    def __add__(self, other: Timing) -> Timing:
        return Timing(self.wall + other.wall, self.cpu + other.cpu)


def timed(fn: Callable[[], object], device: torch.device) -> Timing:
    """Wall and CPU seconds of ``fn()`` (device work included)."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


# ============================================================================================== the epoch's shape
@dataclass(frozen=True)
class EpochShape:
    """What one epoch computes, counted from the config the way ``agents/common.py`` (and HERD) do."""

    batch_size: int  # B: episodes per sampling batch
    batches_per_epoch: int
    num_steps: int  # T: DDIM steps per episode
    stochastic_steps: int  # S: steps with a density (the only ones trained)
    new: int  # fresh trajectories per epoch
    replayed: int  # HERD's relabeled trajectories trained on too
    inner_epochs: int
    minibatch: int  # train_batch_size (None -> batch_size)
    steps_per_minibatch: int  # k = ceil(train_timestep_fraction * S), >= 1 (agents.math.sample_train_timesteps)

    @property
    def trained(self) -> int:
        return self.new + self.replayed

    @property
    def minibatch_sizes(self) -> list[int]:
        """Rows of each minibatch of one inner epoch (``range(0, N, minibatch)`` in ``Agent.update``)."""
        return [min(self.minibatch, self.trained - start) for start in range(0, self.trained, self.minibatch)]

    @property
    def pairs(self) -> int:
        """Forward/backward passes of the update: (minibatch, trained timestep) pairs over the inner epochs."""
        return self.inner_epochs * len(self.minibatch_sizes) * self.steps_per_minibatch


def stochastic_steps(env, eta: float) -> torch.Tensor:
    """``(T,)`` bool: the steps with a density, as ``ddim_policy_step`` flags them (the only ones trained)."""
    diffusion = env.unwrapped.diffusion
    return torch.tensor(
        [bool(ddim_step_coefficients(diffusion.scheduler, t, eta).is_stochastic) for t in diffusion.timesteps]
    )


def epoch_shape(agent: Agent, env) -> EpochShape:
    config: AgentConfig = agent.config  # REINFORCE's own (inner_epochs=1, train_batch_size=None); HERD's = base's
    stochastic = stochastic_steps(env, config.eta).tolist()
    new = config.batch_size * config.batches_per_epoch
    replayed = 0
    if isinstance(agent, HERDAgent) and agent.history:  # HERDAgent.replay: what the next epoch will replay
        replayed = sum(len(part) for part in agent.history)  # the buffer: H batches of the last epoch, relabeled
        if config.herd_keep_history:  # or H batches drawn from the extended history
            replayed = min(replayed, config.herd_buffer_batches * config.batch_size)
    return EpochShape(
        batch_size=config.batch_size,
        batches_per_epoch=config.batches_per_epoch,
        num_steps=len(stochastic),
        stochastic_steps=sum(stochastic),
        new=new,
        replayed=replayed,
        inner_epochs=config.inner_epochs,
        minibatch=config.train_batch_size or config.batch_size,
        steps_per_minibatch=max(1, math.ceil(config.train_timestep_fraction * sum(stochastic))),
    )


def base_name(agent: Agent) -> str:
    return agent.base.name if isinstance(agent, HERDAgent) else agent.name


# ============================================================================================== bare compute
class BareEpoch:
    """The model calls of one epoch, with no env and no agent: same shapes, same policy module."""

    def __init__(self, agent: Agent, env, shape: EpochShape, prompts: list[str], seed: int):
        self.agent = agent
        diffusion = env.unwrapped.diffusion
        self.diffusion = diffusion
        self.shape = shape
        self.policy: DiffusionPolicy = agent.policy
        self.device = diffusion.device
        self.generator = torch.Generator().manual_seed(seed)
        config = agent.config
        self.reference = base_name(agent) == "dpok"  # DPOK scores every trained step under pi_pre too
        # HERD without the off-policy correction rescores the replay under the current policy each epoch
        self.rescore_replay = isinstance(agent, HERDAgent) and not config.herd_off_policy_correction
        batch_prompts = [prompts[i % len(prompts)] for i in range(shape.batch_size)]
        self.prompts = batch_prompts
        with torch.no_grad():
            self.embeddings = diffusion.encode_prompts(batch_prompts).to(self.device)  # (B, S, D)
        self.parameters = self.policy.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.max_grad_norm = config.max_grad_norm
        self.timesteps = diffusion.timesteps.to(self.device)  # (T,)
        self.stochastic = stochastic_steps(env, config.eta)  # (T,) bool
        self.fraction = config.train_timestep_fraction
        self.latent_shape = diffusion.latent_shape
        self.init_noise_sigma = float(diffusion.scheduler.init_noise_sigma)
        self.records: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []  # per batch: T x_t's, T x_{t-1}'s
        self.replay: tuple[torch.Tensor, ...] = ()  # HERD uncorrected: the trajectories to rescore

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self) -> None:
        """Every batch of the epoch: the guided UNet call and the DDIM step of each timestep."""
        self.records = []
        batch = self.shape.batch_size
        for _ in range(self.shape.batches_per_epoch):
            noise = torch.randn(batch, *self.latent_shape, generator=self.generator) * self.init_noise_sigma
            latents = noise.to(self.device)  # (B, C, H, W)
            states, actions = [], []
            for timestep in self.timesteps:
                step = self.policy(latents, timestep.repeat(batch), self.embeddings, None, self.generator)
                states.append(latents)
                actions.append(step.action)
                latents = step.action
            self.records.append((states, actions))  # stacked later, outside the timing

    @torch.no_grad()
    def decode_and_reward(self) -> None:
        """What the env adds at the end of each batch: VAE decode, reward, the world's extra scores."""
        for _, actions in self.records:
            images = self.diffusion.decode_latents(actions[-1])  # (B, 3, H, W)
            self.diffusion.score_images(images, self.prompts)  # the reward and the world's extra scores

    # ------------------------------------------------------------------------------ training
    def trajectories(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sampled x_t and x_{t-1} ``(N, T, C, H, W)`` and embeddings ``(N, S, D)`` of the trained
        trajectories: the new ones, then HERD's replay (more of the same rows; its prompts would be relabeled)."""
        states = torch.cat([torch.stack(s, dim=1) for s, _ in self.records])  # (N_new, T, C, H, W)
        actions = torch.cat([torch.stack(a, dim=1) for _, a in self.records])
        embeddings = self.embeddings.repeat(self.shape.batches_per_epoch, 1, 1)  # (N_new, S, D)
        rows = torch.arange(self.shape.trained, device=self.device) % self.shape.new  # (N,)
        return states[rows], actions[rows], embeddings[rows]

    def training_inputs(self) -> list[list[tuple[torch.Tensor, ...]]]:
        """Per minibatch of every inner epoch, its ``k`` (x_t, t, c, x_{t-1}) inputs, built before timing."""
        shape = self.shape
        states, actions, embeddings = self.trajectories()
        minibatches = []
        for _ in range(shape.inner_epochs):
            start = 0
            for size in shape.minibatch_sizes:
                rows = torch.arange(start, start + size, device=self.device)  # (M,)
                start += size
                steps = sample_train_timesteps(self.stochastic, size, self.fraction, self.generator)  # (M, k)
                pairs = []
                for j in range(steps.shape[1]):
                    index = steps[:, j].to(self.device)  # (M,)
                    pairs.append((states[rows, index], self.timesteps[index], embeddings[rows], actions[rows, index]))
                minibatches.append(pairs)
        return minibatches

    def train(self, minibatches: list[list[tuple[torch.Tensor, ...]]]) -> None:
        """One forward + backward of the policy's log-prob per pair, one clipped AdamW step per minibatch."""
        for pairs in minibatches:
            for latents, timesteps, embeddings, actions in pairs:
                step = self.policy(latents, timesteps, embeddings, actions)
                advantages = torch.randn(len(latents), generator=self.generator).to(self.device)
                loss = -(advantages * step.log_prob).mean()
                if self.reference:
                    reference = self.policy.reference(latents, timesteps, embeddings, actions)
                    loss = loss + gaussian_step_kl(step.mean, reference.mean, step.std_dev_t).mean()
                (loss / len(pairs)).backward()
            torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def rescore(self) -> None:
        """HERD without the correction: one no-grad forward per stochastic step over the replay."""
        states, actions, embeddings = (x[self.shape.new :] for x in self.replay)  # (R, T, ...), (R, S, D)
        for j in self.stochastic.nonzero().flatten().tolist():
            self.policy(states[:, j], self.timesteps[j].repeat(len(states)), embeddings, actions[:, j])

    def time(self) -> dict[str, Timing]:
        """Seconds of one bare epoch: sampling, training (and HERD's rescoring), and decode + reward apart."""
        snapshot = [p.detach().clone() for p in self.parameters]  # the bare AdamW steps must not train the agent
        seconds = {"sampling": timed(self.sample, self.device)}
        seconds["decode_reward"] = timed(self.decode_and_reward, self.device)
        minibatches = self.training_inputs()
        seconds["training"] = timed(lambda: self.train(minibatches), self.device)
        if self.rescore_replay:
            self.replay = self.trajectories()
            seconds["training"] += timed(self.rescore, self.device)
        with torch.no_grad():
            for parameter, saved in zip(self.parameters, snapshot, strict=True):
                parameter.copy_(saved)
        seconds["bare"] = seconds["sampling"] + seconds["training"]
        return seconds


def time_phases(agent: Agent, device: torch.device) -> dict[str, list[Timing]]:
    """Time each call of the agent's ``collect`` and ``update`` (HERD: its base agent's), by wrapping them."""
    inner = agent.base if isinstance(agent, HERDAgent) else agent
    phases: dict[str, list[Timing]] = {"collect": [], "update": []}

    def timing(method: Callable, times: list[Timing]) -> Callable:
        def wrapper(*args, **kwargs):
            out = []
            times.append(timed(lambda: out.append(method(*args, **kwargs)), device))
            return out[0]

        return wrapper

    for name, times in phases.items():  # instance attributes: shadow the methods for this agent only
        setattr(inner, name, timing(getattr(inner, name), times))
    return phases


# ============================================================================================== reporting
def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    config = AgentConfig(**{field.name: getattr(args, field.name) for field, _, _ in agent_config_fields()})
    model, reward, prompts, latent_bound = args.model, args.reward, args.prompts, args.latent_bound
    if model == "tiny":
        model = str(build_tiny_pipeline(tempfile.mkdtemp(prefix="tiny-sd-") + "/pipeline"))
        reward = reward or TINY_REWARD
        prompts = prompts or TINY_PROMPTS
        latent_bound = latent_bound or 1e4
    env = gym.make_vec(
        diffusion_gym.ENV_ID,
        num_envs=config.batch_size,
        vectorization_mode="vector_entry_point",
        model=model,
        reward=reward,
        prompts=prompts,
        num_inference_steps=args.steps,
        device=args.device,
        dtype=args.dtype,
        latent_bound=latent_bound or 50.0,
        array_backend="torch",  # the agents take torch tensors on the env's device
    ).unwrapped
    device = torch.device(env.diffusion.device)
    agent = make_agent(args.agent, env, config)
    bare = BareEpoch(agent, env, epoch_shape(agent, env), list(env.diffusion.prompt_pool), seed=config.seed + 1)

    results: list[EpochResult] = []
    runs: list[dict[str, Timing]] = []
    phases = time_phases(agent, device)
    agent.train_epoch(), bare.time()  # warm-up (HERD: fills its buffer, so the timed epochs replay)
    shapes = []
    for _ in range(args.epochs):  # alternating, so that a load change on a shared machine hits both alike
        bare.shape = epoch_shape(agent, env)  # HERD's replay can grow over the first epochs (extended history)
        shapes.append(bare.shape)
        epoch = timed(lambda: results.append(agent.train_epoch()), device)
        runs.append({"epoch": epoch, **{name: times[-1] for name, times in phases.items()}, **bare.time()})
        runs[-1]["other"] = Timing(
            epoch.wall - runs[-1]["collect"].wall - runs[-1]["update"].wall,
            epoch.cpu - runs[-1]["collect"].cpu - runs[-1]["update"].cpu,
        )
    shape = shapes[-1]  # what the table describes (HERD with an extended history: its last, largest epoch)
    guidance = agent.policy.guidance_scale
    agent.close()
    env.close()

    def wall(key: str) -> float:
        return statistics.median(run[key].wall for run in runs)

    def cpu(key: str) -> float:
        return statistics.median(run[key].cpu for run in runs)

    cfg = 2 if guidance != 1.0 else 1
    extra = " + ref fwd" if bare.reference else ""
    extra += f" + {shape.stochastic_steps} rescoring fwd" if bare.rescore_replay else ""
    optimizer_steps = shape.inner_epochs * len(shape.minibatch_sizes)
    print(
        f"agent={args.agent} model={args.model} device={device} threads={args.threads} dtype={args.dtype} "
        f"lora_rank={config.lora_rank} guidance={guidance:g} timed epochs={args.epochs} (after 1 warm-up)"
    )
    print(
        f"epoch: {shape.batches_per_epoch} batches x {shape.batch_size} episodes x {shape.num_steps} steps "
        f"({shape.stochastic_steps} stochastic); update: {shape.inner_epochs} inner epochs x "
        f"{len(shape.minibatch_sizes)} minibatches {shape.minibatch_sizes} of {shape.trained} trajectories "
        f"({shape.new} new + {shape.replayed} replayed) x {shape.steps_per_minibatch} steps = {shape.pairs} "
        f"fwd+bwd{extra}, {optimizer_steps} optimiser steps"
    )
    trained = [int(result.metrics["num_train_samples"]) for result in results]
    counted = [s.trained for s in shapes]
    if trained != counted:
        print(f"WARNING: the agent trained on {trained} trajectories per epoch, the count says {counted}")
    print()
    rows = [
        ("epoch (train_epoch)", "epoch", "the agent through the env"),
        ("  collect", "collect", "the rollouts: ~ sampling + decode + reward"),
        ("  update", "update", "Agent.update: ~ training"),
        ("  other", "other", "advantages, cat, HERD relabeling, metrics"),
        ("bare compute", "bare", "sampling + training"),
        (
            "  sampling",
            "sampling",
            f"{shape.batches_per_epoch * shape.num_steps} UNet fwd at batch {cfg * shape.batch_size}",
        ),
        ("  training", "training", f"{shape.pairs} UNet fwd+bwd{extra}, batch <= {cfg * shape.minibatch}"),
        ("decode + reward", "decode_reward", f"{shape.batches_per_epoch} batches; not in the bare compute"),
    ]
    print(f"{'':<22} {'wall s':>8} {'cpu s':>8}   {'':<48} wall s of every timed run")
    for label, key, note in rows:
        every = ", ".join(f"{run[key].wall:.3f}" for run in runs)
        print(f"{label:<22} {wall(key):8.3f} {cpu(key):8.3f}   {note:<48} {every}")
    print()
    ratio = wall("epoch") / wall("bare")
    print(
        f"epoch / bare           {ratio:8.3f} {cpu('epoch') / cpu('bare'):8.3f}   target <= {TARGET} (wall): "
        f"{'met' if ratio <= TARGET else 'NOT met'}"
    )
    with_reward = wall("bare") + wall("decode_reward"), cpu("bare") + cpu("decode_reward")
    print(f"epoch / (bare + d+r)   {wall('epoch') / with_reward[0]:8.3f} {cpu('epoch') / with_reward[1]:8.3f}")
    rest = wall("epoch") - with_reward[0], cpu("epoch") - with_reward[1]
    print(
        f"rest of the epoch      {rest[0]:+8.3f} {rest[1]:+8.3f}   env, agent, Python: "
        f"{100 * rest[0] / wall('epoch'):+.1f}% of the epoch (wall), {100 * rest[1] / cpu('epoch'):+.1f}% (cpu)"
    )
    print(f"peak RSS               {peak_rss_mib():8.0f} MiB  (the whole process, model loading included)")
    if device.type == "cuda":
        print(f"CUDA max allocated     {torch.cuda.max_memory_allocated(device) / 2**20:8.0f} MiB")
    if device.type == "cpu":
        print("cpu s: process CPU time (all threads); on a CPU shared with other jobs it varies less than wall time")


if __name__ == "__main__":
    main()
