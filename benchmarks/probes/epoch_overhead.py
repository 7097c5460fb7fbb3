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

    python benchmarks/probes/epoch_overhead.py                                  # DDPO on the embedded Shapes world
    python benchmarks/probes/epoch_overhead.py --agent herd --threads 1         # HERD; --threads 1 on a shared CPU
    python benchmarks/probes/epoch_overhead.py --model tiny --steps 4 --batch-size 4 --epochs 2 --threads 1  # smoke
    python benchmarks/probes/epoch_overhead.py --device cuda --batch-size 32    # on a GPU

**Compute variants** (``--variants``): instead of the bare compute, times the epochs of one agent per variant of
the UNet's compute, in one process on one env (one model), interleaved: after ``--warmup`` epochs of each, round
``r`` of ``--epochs`` runs one epoch of every variant, the order rotated by ``r``. Before each epoch the
variant's policy re-applies its settings to the shared UNet (``DiffusionPolicy.apply_unet_settings``). The
agents share the seed, so they sample the same prompts and noise. Variants (``AgentConfig`` fields):

* ``fp32-eager``: the defaults, the baseline of the ratios (required);
* ``channels-last``: ``channels_last`` (the UNet's conv weights NHWC);
* ``classic-attention``: ``attention="classic"``, diffusers' ``AttnProcessor`` against the default
  ``AttnProcessor2_0`` (fused SDPA), which the baseline already uses;
* ``bf16-autocast``: ``autocast_bf16`` (every UNet forward under ``torch.autocast`` in bfloat16);
* ``compile``: ``compile_unet`` (``torch.compile``, mode default); its compilation happens in the warm-up
  epochs and is reported apart: the warm-up epochs' excess over its median epoch.

Join features with ``+`` for a combination (``compile+channels-last``); ``all`` is the five above. Each row: the
median wall and CPU seconds of an epoch, their ratios to ``fp32-eager``, the warm-up epochs, and the max abs
difference of the UNet's output (the policy's conditional noise prediction, every step of the schedule, on one
fixed input, with the baseline's trained LoRA weights copied into every variant) from ``fp32-eager``'s, so that
the precision cost shows next to the speed.

    python benchmarks/probes/epoch_overhead.py --variants all --agent herd --herd-base loop --prompts shapes-long \\
        --steps 10 --epochs 5 --threads 2                                         # the compute variants
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from agents import AGENT_NAMES, Agent, AgentConfig, EnvConfig, EpochResult, make_agent
from agents.algorithms.math import gaussian_step_kl, sample_train_timesteps
from agents.algorithms.policy import DiffusionPolicy
from agents.cli import add_agent_config_flags, config_from_args
from diffusion_gym.env_config import TINY_LATENT_BOUND, TINY_REWARD

TARGET = 1.15  # the target: an epoch takes at most 1.15x its bare compute


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
        help=f"the env's latent bound (default: the env's 50; {TINY_LATENT_BOUND:g} for --model tiny, as a random "
        "UNet drifts)",
    )
    bench.add_argument(
        "--variants",
        type=variant_names,
        default=None,
        help="time the epoch per compute variant instead of against the bare compute: a comma-separated list of "
        f"{', '.join(ALL_VARIANTS)} (features joined with '+' combine), or 'all'",
    )
    bench.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up epochs before the timed ones (default: 1; with --variants 2 per variant, as HERD replays "
        "from its second epoch on: new shapes for a compiled UNet)",
    )
    add_agent_config_flags(parser.add_argument_group("agent (agents.config.AgentConfig; its defaults)"))
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = 2 if args.variants else 1
    if args.warmup < (1 if args.variants is None else 0):
        parser.error(f"--warmup must be >= 1 (>= 0 with --variants), got {args.warmup}")
    if args.variants:
        defaults = AgentConfig()
        chosen = [name for name in COMPUTE_FIELDS if getattr(args, name) != getattr(defaults, name)]
        if chosen:
            flags = ", ".join("--" + name.replace("_", "-") for name in chosen)
            parser.error(f"--variants sets the compute options per variant; drop {flags}")
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    return args


# ============================================================================================== compute variants
BASELINE = "fp32-eager"
FEATURES: dict[str, dict[str, object]] = {  # variant feature -> the AgentConfig fields it sets
    "channels-last": {"channels_last": True},
    "classic-attention": {"attention": "classic"},
    "bf16-autocast": {"autocast_bf16": True},
    "compile": {"compile_unet": True},
}
ALL_VARIANTS = (BASELINE, *FEATURES)
COMPUTE_FIELDS = ("channels_last", "attention", "autocast_bf16", "compile_unet")


def variant_fields(name: str) -> dict[str, object]:
    """The AgentConfig fields of variant ``name``: ``fp32-eager`` (none) or features joined with ``+``."""
    if name == BASELINE:
        return {}
    features = name.split("+")
    unknown = [feature for feature in features if feature not in FEATURES]
    if unknown or len(set(features)) != len(features):
        raise ValueError(
            f"unknown or repeated compute feature in variant {name!r}: expected {BASELINE!r} or features from "
            f"{list(FEATURES)} joined with '+'"
        )
    return {field: value for feature in features for field, value in FEATURES[feature].items()}


def variant_names(text: str) -> list[str]:
    """``--variants``: 'all' or distinct comma-separated variants, the baseline among them."""
    names = list(ALL_VARIANTS) if text.strip() == "all" else [part.strip() for part in text.split(",") if part]
    try:
        for name in names:
            variant_fields(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"repeated variant in {text!r}")
    if BASELINE not in names:
        raise argparse.ArgumentTypeError(f"the variants must include {BASELINE!r}, the baseline of the ratios")
    return names


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
    """What one epoch computes, counted from the config the way ``agents/algorithms/base.py`` (and HERD's relabeler)
    do."""

    batch_size: int  # B: episodes per sampling batch
    batches_per_epoch: int
    num_steps: int  # T: DDIM steps per episode
    stochastic_steps: int  # S: steps with a density (the only ones trained)
    new: int  # fresh trajectories per epoch
    replayed: int  # HERD's relabeled trajectories trained on too
    inner_epochs: int
    minibatch: int  # train_batch_size (None -> batch_size)
    # k = ceil(train_timestep_fraction * S), >= 1 (agents.algorithms.math.sample_train_timesteps)
    steps_per_minibatch: int

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


def epoch_shape(agent: Agent) -> EpochShape:
    config: AgentConfig = agent.config  # REINFORCE's own (inner_epochs=1, train_batch_size=None)
    stochastic = agent.policy.stochastic_steps().tolist()
    new = config.batch_size * config.batches_per_epoch
    replayed = 0
    relabeler = agent.relabeler  # HERD: HindsightRelabeler.replay, what the next epoch will replay
    if relabeler is not None and relabeler.history:
        replayed = sum(len(part) for part in relabeler.history)  # the buffer: H batches of the last epoch, relabeled
        if config.herd_keep_history:  # or H batches drawn from the extended history
            replayed = min(replayed, relabeler.replay_size)
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


# ============================================================================================== bare compute
class BareEpoch:
    """The model calls of one epoch, with no env and no agent: same shapes, same policy module."""

    def __init__(self, agent: Agent, shape: EpochShape, prompts: list[str], seed: int):
        self.agent = agent
        diffusion = agent.diffusion
        self.diffusion = diffusion
        self.shape = shape
        self.policy: DiffusionPolicy = agent.policy
        self.device = diffusion.device
        self.generator = torch.Generator().manual_seed(seed)
        config = agent.config
        self.reference = agent.name == "dpok"  # DPOK scores every trained step under pi_pre too
        # HERD without the off-policy correction rescores the replay under the current policy each epoch
        self.rescore_replay = agent.relabeler is not None and not config.herd_off_policy_correction
        batch_prompts = [prompts[i % len(prompts)] for i in range(shape.batch_size)]
        self.prompts = batch_prompts
        with torch.no_grad():
            self.embeddings = diffusion.encode_prompts(batch_prompts).to(self.device)  # (B, S, D)
        self.parameters = self.policy.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.max_grad_norm = config.max_grad_norm
        self.timesteps = diffusion.timesteps.to(self.device)  # (T,)
        self.stochastic = self.policy.stochastic_steps()  # (T,) bool
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
    """Time each call of the agent's ``collect`` and ``update``, by wrapping them."""
    phases: dict[str, list[Timing]] = {"collect": [], "update": []}

    def timing(method: Callable, times: list[Timing]) -> Callable:
        def wrapper(*args, **kwargs):
            out = []
            times.append(timed(lambda: out.append(method(*args, **kwargs)), device))
            return out[0]

        return wrapper

    for name, times in phases.items():  # instance attributes: shadow the methods for this agent only
        setattr(agent, name, timing(getattr(agent, name), times))
    return phases


# ============================================================================================== reporting
def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    config = config_from_args(args)
    settings = {"num_inference_steps": args.steps, "device": args.device, "dtype": args.dtype}
    if args.model == "tiny":  # a random tiny pipeline in a temp folder, with the tiny world's reward and prompts
        env_settings = EnvConfig.tiny(reward=args.reward, prompts=args.prompts, **settings)
    else:
        env_settings = EnvConfig(args.model, args.reward, args.prompts, **settings)
    if args.latent_bound is not None:
        env_settings = dataclasses.replace(env_settings, latent_bound=args.latent_bound)
    env = env_settings.make(config.batch_size)
    if args.variants:
        compare_variants(args, env, config)
    else:
        compare_to_bare_compute(args, env, config)
    env.close()


def compare_to_bare_compute(args: argparse.Namespace, env, config: AgentConfig) -> None:
    """The epoch against its bare compute (the probe without ``--variants``)."""
    diffusion = env.unwrapped.diffusion
    device = torch.device(diffusion.device)
    agent = make_agent(args.agent, env, config)
    bare = BareEpoch(agent, epoch_shape(agent), list(diffusion.prompt_pool), seed=config.seed + 1)

    results: list[EpochResult] = []
    runs: list[dict[str, Timing]] = []
    phases = time_phases(agent, device)
    for _ in range(args.warmup):  # HERD: the first fills its buffer, so the timed epochs replay
        agent.train_epoch(), bare.time()
    shapes = []
    for _ in range(args.epochs):  # alternating, so that a load change on a shared machine hits both alike
        bare.shape = epoch_shape(agent)  # HERD's replay can grow over the first epochs (extended history)
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
        f"lora_rank={config.lora_rank} guidance={guidance:g} timed epochs={args.epochs} (after {args.warmup} "
        "warm-up)"
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
    print_memory(device)


def print_memory(device: torch.device) -> None:
    print(f"peak RSS               {peak_rss_mib():8.0f} MiB  (the whole process, model loading included)")
    if device.type == "cuda":
        print(f"CUDA max allocated     {torch.cuda.max_memory_allocated(device) / 2**20:8.0f} MiB")
    if device.type == "cpu":
        print("cpu s: process CPU time (all threads); on a CPU shared with other jobs it varies less than wall time")


# ============================================================================================== compute variants
@dataclass
class VariantRun:
    """One compute variant: its agent (on the shared env and model) and its epochs' timings."""

    name: str
    agent: Agent
    warmup: list[Timing] = dataclasses.field(default_factory=list)
    epochs: list[Timing] = dataclasses.field(default_factory=list)

    def epoch(self, device: torch.device) -> Timing:
        """One timed ``train_epoch``, the shared UNet in this variant's memory format and attention first."""
        self.agent.policy.apply_unet_settings()
        return timed(self.agent.train_epoch, device)

    def median(self, key: str) -> float:
        return statistics.median(getattr(timing, key) for timing in self.epochs)


def compiled_graphs() -> int:
    """Graphs torch.compile (dynamo) has compiled so far in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@torch.no_grad()
def output_differences(runs: list[VariantRun], seed: int) -> tuple[list[float], float]:
    """Max abs difference of each variant's UNet output from the baseline's (``runs[0]``), and the baseline's max
    abs output: the policy's conditional noise prediction (``DiffusionPolicy.predict``) at every step of the
    schedule, on one fixed input, every variant with the baseline's trainable weights.

    The input has ``2 x batch_size`` rows, the shape of the guided sampling call, so that a compiled UNet reuses
    its sampling graph instead of compiling another one."""
    baseline = runs[0].agent
    diffusion = baseline.diffusion
    weights = baseline.policy.named_trainable_parameters()
    for run in runs[1:]:
        for name, parameter in run.agent.policy.named_trainable_parameters().items():
            parameter.copy_(weights[name])
    rows = 2 * baseline.config.batch_size
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(rows, *diffusion.latent_shape, generator=generator).to(diffusion.device)  # (N, C, H, W)
    pool = list(diffusion.prompt_pool)
    embeddings = diffusion.encode_prompts([pool[i % len(pool)] for i in range(rows)]).to(diffusion.device)  # (N, S, D)
    outputs = []
    for run in runs:
        run.agent.policy.apply_unet_settings()
        outputs.append(
            torch.stack(
                [run.agent.policy.predict(latents, t.repeat(rows), embeddings) for t in diffusion.timesteps]
            )  # (T, N, C, H, W)
        )
    return [float((output - outputs[0]).abs().max()) for output in outputs], float(outputs[0].abs().max())


def compare_variants(args: argparse.Namespace, env, config: AgentConfig) -> None:
    """One agent per compute variant on the same env, epochs interleaved; prints seconds per epoch and ratios."""
    diffusion = env.unwrapped.diffusion
    device = torch.device(diffusion.device)
    runs = [
        VariantRun(name, make_agent(args.agent, env, dataclasses.replace(config, **variant_fields(name))))
        for name in args.variants
    ]
    for _ in range(args.warmup):
        for run in runs:
            run.warmup.append(run.epoch(device))
    graphs = compiled_graphs()
    for index in range(args.epochs):  # interleaved, the order rotated: a load change hits every variant alike
        for run in runs[index % len(runs) :] + runs[: index % len(runs)]:
            run.epochs.append(run.epoch(device))
    recompiled = compiled_graphs() - graphs
    differences, scale = output_differences(runs, seed=config.seed + 2)
    shape = epoch_shape(runs[0].agent)
    for run in runs:
        run.agent.close()

    print(
        f"agent={args.agent} model={args.model} device={device} threads={args.threads} dtype={args.dtype} "
        f"lora_rank={config.lora_rank} torch={torch.__version__} cpu={torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"epoch: {shape.batches_per_epoch} batches x {shape.batch_size} episodes x {shape.num_steps} steps; update: "
        f"{shape.pairs} fwd+bwd on {shape.trained} trajectories ({shape.new} new + {shape.replayed} replayed); "
        f"{args.warmup} warm-up + {args.epochs} timed epochs per variant, interleaved"
    )
    print()
    baseline = runs[0] if runs[0].name == BASELINE else next(run for run in runs if run.name == BASELINE)
    header = f"{'variant':<30} {'wall s':>8} {'cpu s':>8} {'ratio':>7} {'cpu ratio':>9} {'max |d eps|':>11}"
    print(f"{header}   warm-up wall s; every timed wall s")
    for run, difference in zip(runs, differences, strict=True):
        ratio = run.median("wall") / baseline.median("wall")
        cpu_ratio = run.median("cpu") / baseline.median("cpu")
        warmup = ", ".join(f"{timing.wall:.2f}" for timing in run.warmup) or "-"
        every = ", ".join(f"{timing.wall:.2f}" for timing in run.epochs)
        print(
            f"{run.name:<30} {run.median('wall'):8.3f} {run.median('cpu'):8.3f} {ratio:7.3f} {cpu_ratio:9.3f} "
            f"{difference:11.2e}   {warmup}; {every}"
        )
    print()
    print(
        f"ratio: median epoch / {BASELINE}'s (< 1: faster). max |d eps|: the UNet output's max abs difference from "
        f"{BASELINE}'s on one fixed input, whose outputs reach |eps| = {scale:.3g}"
    )
    for run in runs:
        if run.agent.config.compile_unet:
            compile_seconds = sum(timing.wall - run.median("wall") for timing in run.warmup)
            print(f"{run.name}: compilation ~ {compile_seconds:.1f} s wall (warm-up epochs minus its median epoch)")
    if recompiled:
        print(f"WARNING: torch.compile compiled {recompiled} graphs during the timed epochs: their times include it")
    print_memory(device)


if __name__ == "__main__":
    main()
