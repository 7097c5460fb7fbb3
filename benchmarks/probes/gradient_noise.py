"""How much signal is in one update? The gradient noise scale of DDPO's objective on a prompt set.

McCandlish et al. (2018), "An Empirical Model of Large-Batch Training": with :math:`G` the expected policy
gradient and :math:`\\Sigma` the covariance of one trajectory's gradient, the *noise scale*

.. math:: B_{noise} = \\operatorname{tr}(\\Sigma) / |G|^2

is the batch size at which a minibatch gradient's noise has the size of its signal. Far below it, an optimiser
step is mostly noise and learning is slow whatever the learning rate. This command samples ``--samples``
trajectories from the base policy through the env, takes DDPO's advantages (per-prompt stats, clipped), splits
the trajectories into ``k`` minibatches of ``b`` (``--minibatch``) and computes each minibatch's policy gradient
at ratio 1 (the gradient of PPO's surrogate at its first inner step, which is REINFORCE's), over every
stochastic step, with respect to the trainable (LoRA) parameters. Then, as in the paper's appendix A.1:

* ``S_small = mean_i |g_i|^2``, which estimates ``|G|^2 + tr(Sigma) / b``;
* ``S_big = |mean_i g_i|^2``, which estimates ``|G|^2 + tr(Sigma) / (k b)``;
* ``tr(Sigma) = (S_small - S_big) / (1/b - 1/(k b))`` and ``|G|^2 = S_big - tr(Sigma) / (k b)``.

``--objective rwr`` measures RWR's gradient instead (``agents/algorithms/rwr.py`` with ``rwr_baseline``: the diffusion
loss on the final latents, weighted by the signed weights ``exp(A) / mean - 1``), with as many random (timestep,
noise) draws per trajectory as RWR's update takes; it has no per-step structure, so ``--segments`` must be 1.

``--objective branch`` measures a branching estimator (the credit assignment of TempFlow-GRPO and MixGRPO): groups of
``--branches K`` trajectories share a prompt and an initial noise, every step is deterministic (the DDIM mean)
except one step per group, drawn from ``--branch-steps`` (schedule indices ``a-b``), where each trajectory samples
its own action. The K final images then differ only through that one step's noise: the advantage is the
leave-one-out difference within the group (scaled by the batch's reward std and clipped, as LOOP's), and the
gradient is ``A grad log pi`` of that step alone. The noise scale is in trajectories, as the others.

It also prints the mean cosine between the minibatch gradients (about ``|G|^2 / (|G|^2 + tr(Sigma) / b)``:
near 0 when the minibatches agree on nothing). Both come from one set of samples: the estimate is itself noisy,
and ``|G|^2`` can come out negative when the signal is below what the samples can resolve (then ``B_noise`` is
reported as infinite).

::

    python benchmarks/probes/gradient_noise.py                                # the default run's prompts (shapes-train)
    python benchmarks/probes/gradient_noise.py --prompts shapes-long          # one prompt, as in the comparisons
    python benchmarks/probes/gradient_noise.py --objective rwr                # RWR's weighted diffusion loss instead
    python benchmarks/probes/gradient_noise.py --objective branch --branch-steps 0-6   # one stochastic step per group
    python benchmarks/probes/gradient_noise.py --model tiny --samples 8 --minibatch 2 --num-inference-steps 3  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from agents import AgentConfig, DiffusionPolicy, EnvConfig, Trajectories, collect_trajectories, make_agent
from agents.algorithms.math import clip_advantages, leave_one_out_baseline
from agents.cli import positive_int
from diffusion_gym.sampling import PolicyStep


@dataclass
class NoiseScale:
    """The estimate from ``k`` minibatch gradients of ``b`` trajectories each."""

    minibatch: int  # b
    num_minibatches: int  # k
    small_batch_sq_norm: float  # S_small = mean_i |g_i|^2
    big_batch_sq_norm: float  # S_big = |mean_i g_i|^2
    trace_sigma: float  # tr(Sigma), per trajectory
    true_gradient_sq_norm: float  # |G|^2 (can be negative: signal below resolution)
    noise_scale: float  # B_noise = tr(Sigma) / |G|^2; inf where |G|^2 <= 0
    mean_cosine: float  # mean over pairs i < j of cos(g_i, g_j)


def noise_scale(gradients: torch.Tensor, minibatch: int) -> NoiseScale:
    """:class:`NoiseScale` of ``gradients`` ``(k, P)``: ``k >= 2`` minibatch gradients of ``minibatch`` trajectories."""
    num, _ = gradients.shape
    if num < 2:
        raise ValueError(f"need at least 2 minibatch gradients, got {num}")
    gradients = gradients.double()
    small = float((gradients**2).sum(dim=1).mean())  # mean_i |g_i|^2
    big = float((gradients.mean(dim=0) ** 2).sum())  # |mean_i g_i|^2
    trace = (small - big) / (1 / minibatch - 1 / (num * minibatch))
    signal = big - trace / (num * minibatch)
    unit = gradients / gradients.norm(dim=1, keepdim=True).clamp_min(1e-30)  # (k, P)
    cosines = unit @ unit.T  # (k, k)
    pairs = cosines[torch.triu_indices(num, num, offset=1).unbind()]  # (k (k - 1) / 2,)
    return NoiseScale(
        minibatch=minibatch,
        num_minibatches=num,
        small_batch_sq_norm=small,
        big_batch_sq_norm=big,
        trace_sigma=trace,
        true_gradient_sq_norm=signal,
        noise_scale=trace / signal if signal > 0 else math.inf,
        mean_cosine=float(pairs.mean()),
    )


def step_segments(stochastic: torch.Tensor, count: int) -> list[list[int]]:
    """The stochastic steps' indices in ``count`` contiguous groups, noisiest first (sizes differ by at most 1)."""
    steps = torch.nonzero(stochastic).flatten()
    if not 1 <= count <= len(steps):
        raise ValueError(f"--segments must be between 1 and the {len(steps)} stochastic steps, got {count}")
    return [chunk.tolist() for chunk in torch.tensor_split(steps, count)]


def flat_gradient(agent) -> torch.Tensor:
    """``(P,)``: the agent's accumulated gradient over its trainable parameters, on the CPU (zeros where none)."""
    grads = [p.grad.flatten().cpu() if p.grad is not None else torch.zeros(p.numel()) for p in agent.parameters]
    return torch.cat(grads)


def minibatch_gradients(
    agent, samples: Trajectories, advantages: torch.Tensor, segments: list[list[int]]
) -> torch.Tensor:
    """``(G, P)``: per segment, the flat gradient of ``-mean_j A_j sum_{t in segment} log pi(x_{t-1} | x_t, c_j)``.

    Their sum over the segments is the whole trajectory's policy gradient.
    """
    num = len(samples)
    rows = []
    for segment in segments:
        agent.optimizer.zero_grad(set_to_none=True)
        for t in segment:
            step = agent.policy(
                samples.latents[:, t],  # (b, C, H, W)
                samples.timesteps[t].repeat(num).to(samples.latents.device),  # (b,)
                samples.prompt_embeddings,  # (b, S, D)
                samples.next_latents[:, t],  # (b, C, H, W)
            )
            (-(advantages.to(step.log_prob.device) * step.log_prob).mean()).backward()  # accumulates over t
        rows.append(flat_gradient(agent))  # (P,)
    agent.optimizer.zero_grad(set_to_none=True)
    return torch.stack(rows)  # (G, P)


def rwr_minibatch_gradient(agent, samples: Trajectories, weights: torch.Tensor) -> torch.Tensor:
    """``(1, P)``: the flat gradient of RWR's weighted diffusion loss on ``samples``, averaged over its draws."""
    agent.optimizer.zero_grad(set_to_none=True)
    draws = agent.draws_per_trajectory(samples)
    clean = samples.next_latents[:, -1]  # (b, C, H, W): x_0
    for _ in range(draws):
        loss = agent.diffusion_loss(clean, samples.prompt_embeddings, weights.to(clean.device))
        (loss / draws).backward()
    gradient = flat_gradient(agent)  # (P,)
    agent.optimizer.zero_grad(set_to_none=True)
    return gradient[None]  # (1, P)


def parse_step_range(text: str | None, stochastic: torch.Tensor) -> list[int]:
    """The stochastic step indices in ``"a-b"`` (inclusive; ``None``: every stochastic step)."""
    candidates = torch.nonzero(stochastic).flatten().tolist()
    if text is None:
        return candidates
    match = re.fullmatch(r"(\d+)-(\d+)", text.strip())
    if match is None:
        raise ValueError(f"--branch-steps must look like '0-6' (schedule step indices), got {text!r}")
    first, last = int(match.group(1)), int(match.group(2))
    chosen = [j for j in candidates if first <= j <= last]
    if not chosen:
        raise ValueError(f"--branch-steps {text!r} holds none of the stochastic steps {candidates}")
    return chosen


class BranchingPolicy:
    """``policy``, but each row samples its action only at its branch timestep and takes the DDIM mean (a
    deterministic step, log-prob 0) at every other. :class:`agents.algorithms.rollout.Rollout` calls only
    :meth:`sample`."""

    def __init__(self, policy: DiffusionPolicy, branch_timesteps: torch.Tensor):
        self.policy = policy
        self.branch_timesteps = branch_timesteps  # (B,) int64: each row's scheduler timestep t to branch at

    def sample(self, observation: dict[str, torch.Tensor], generator: torch.Generator) -> PolicyStep:
        step = self.policy.sample(observation, generator)
        timesteps = observation["timestep"][:, 0]  # (B,)
        here = timesteps == self.branch_timesteps.to(timesteps.device)  # (B,) the rows that branch at this step
        return step._replace(
            action=torch.where(here.view(-1, 1, 1, 1), step.action, step.mean),  # (B, C, H, W)
            log_prob=torch.where(here, step.log_prob, torch.zeros_like(step.log_prob)),  # (B,)
        )


def collect_branches(agent, env, samples: int, branches: int, steps: str | None) -> tuple[Trajectories, torch.Tensor]:
    """``samples`` trajectories in groups of ``branches``, through ``env``'s reset/step; returns them and each
    one's branch step index ``(N,)``.

    A group shares its prompt and its initial noise (one env seed for all its sub-envs); each group draws one
    step index from ``steps``; every trajectory takes its policy's sampled action at that step and the DDIM
    mean at every other (:class:`BranchingPolicy`), so the group's trajectories agree up to that step.
    """
    size = env.num_envs
    groups_per_batch = size // branches
    candidates = parse_step_range(steps, agent.policy.stochastic_steps())
    batches, branch_steps = [], []
    for _ in range(samples // size):
        rows = agent.rng.integers(len(agent.prompts), size=groups_per_batch)
        prompts = [agent.prompts[i] for i in rows for _ in range(branches)]  # (B,): each group's prompt K times
        seeds = [int(s) for s in agent.rng.integers(2**31, size=groups_per_batch) for _ in range(branches)]
        chosen = torch.tensor([candidates[int(i)] for i in agent.rng.integers(len(candidates), size=groups_per_batch)])
        chosen = chosen.repeat_interleave(branches)  # (B,) step indices
        policy = BranchingPolicy(agent.policy, env.unwrapped.diffusion.timesteps.cpu()[chosen])
        batches.append(collect_trajectories(env, policy, prompts, seeds, agent.generator))
        branch_steps.append(chosen)
    return Trajectories.cat(batches), torch.cat(branch_steps)  # (N, ...), (N,)


def branch_advantages(rewards: torch.Tensor, branches: int, max_abs: float) -> torch.Tensor:
    """``(N,)``: leave-one-out within consecutive groups of ``branches``, over the batch's reward std, clipped."""
    grouped = rewards.view(-1, branches)  # (G, K)
    advantages = (grouped - leave_one_out_baseline(grouped)).flatten()  # (N,)
    return clip_advantages(advantages / (rewards.std(unbiased=False) + 1e-6), max_abs)


def branch_minibatch_gradient(
    agent, samples: Trajectories, branch_steps: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """``(1, P)``: the flat gradient of ``-mean_j A_j log pi(x_{t-1} | x_t, c_j)`` at each trajectory's branch step."""
    agent.optimizer.zero_grad(set_to_none=True)
    rows = torch.arange(len(samples))
    index = branch_steps.to(samples.latents.device)  # (b,)
    step = agent.policy(
        samples.latents[rows, index],  # (b, C, H, W)
        samples.timesteps.to(index.device)[index],  # (b,)
        samples.prompt_embeddings,  # (b, S, D)
        samples.next_latents[rows, index],  # (b, C, H, W)
    )
    (-(advantages.to(step.log_prob.device) * step.log_prob).mean()).backward()
    gradient = flat_gradient(agent)  # (P,)
    agent.optimizer.zero_grad(set_to_none=True)
    return gradient[None]  # (1, P)


def measure(
    model: str,
    prompts: str | tuple[str, ...] | None,
    reward: str | None,
    samples: int,
    minibatch: int,
    num_inference_steps: int | None,
    seed: int,
    lora_rank: int,
    latent_bound: float,
    segments: int = 1,
    objective: str = "ddpo",
    branches: int = 4,
    branch_steps: str | None = None,
) -> tuple[dict[str, NoiseScale], dict[str, float]]:
    """Sample ``samples`` trajectories of ``prompts``; the gradient noise scale of ``objective`` (``"ddpo"`` or
    ``"rwr"``) on them, for the whole trajectory (key ``"all steps"``) and, for DDPO with ``segments > 1``, for
    each contiguous segment of steps (key ``"t=999..699"``). ``"branch"``: groups of ``branches`` with one
    stochastic step each, drawn from ``branch_steps`` (:func:`collect_branches`)."""
    if samples % minibatch or samples // minibatch < 2:
        raise ValueError(f"--samples ({samples}) must be a multiple of --minibatch ({minibatch}), at least twice it")
    if objective not in ("ddpo", "rwr", "branch"):
        raise ValueError(f"--objective must be 'ddpo', 'rwr' or 'branch', got {objective!r}")
    if objective != "ddpo" and segments != 1:
        raise ValueError(f"--segments applies to DDPO's per-step gradient only, not to --objective {objective}")
    batch_size = math.gcd(samples, 32)  # env batch: up to 32 episodes at a time
    if objective == "branch" and (branches < 2 or batch_size % branches or minibatch % branches):
        raise ValueError(
            f"--branches ({branches}) must be >= 2 and divide both the env batch ({batch_size}) "
            f"and --minibatch ({minibatch})"
        )
    env = EnvConfig(model, reward, prompts, num_inference_steps, latent_bound=latent_bound).make(batch_size)
    config = AgentConfig(
        seed=seed,
        batch_size=batch_size,
        batches_per_epoch=samples // batch_size,
        lora_rank=lora_rank,
        rwr_baseline=True,  # --objective rwr: the signed weights (DDPO ignores the field)
    )
    agent = make_agent("ddpo" if objective == "branch" else objective, env, config)
    try:
        started = time.perf_counter()
        if objective == "branch":
            trajectories, chosen = collect_branches(agent, env, samples, branches, branch_steps)
            advantages = branch_advantages(trajectories.rewards, branches, config.adv_clip_max)  # (N,)
        else:
            trajectories = Trajectories.cat(agent.collect())  # (N, ...) from the base policy
            advantages = agent.advantages(trajectories).cpu()  # (N,): DDPO's advantages, or RWR's signed weights
        sampled = time.perf_counter() - started
        groups = step_segments(trajectories.stochastic, segments)
        gradients = []
        for start in tqdm(range(0, samples, minibatch), desc="minibatch gradients", unit="mb"):
            rows = list(range(start, start + minibatch))
            if objective == "rwr":
                gradients.append(rwr_minibatch_gradient(agent, trajectories.select(rows), advantages[rows]))
            elif objective == "branch":
                batch = trajectories.select(rows)
                gradients.append(branch_minibatch_gradient(agent, batch, chosen[rows], advantages[rows]))
            else:
                gradients.append(minibatch_gradients(agent, trajectories.select(rows), advantages[rows], groups))
        per_segment = torch.stack(gradients, dim=1)  # (G, k, P)
        estimates = {"all steps": noise_scale(per_segment.sum(dim=0), minibatch)}
        if segments > 1:  # DDPO only (checked above)
            timesteps = trajectories.timesteps.tolist()
            for group, grads in zip(groups, per_segment, strict=True):
                estimates[f"t={timesteps[group[0]]}..{timesteps[group[-1]]}"] = noise_scale(grads, minibatch)
        info = {
            "reward_mean": float(trajectories.rewards.mean()),
            **(
                {"groups_with_unequal_rewards": unequal_groups(trajectories.rewards, branches)}
                if objective == "branch"
                else {}
            ),
            "reward_std": float(trajectories.rewards.std()),
            "distinct_prompts": len(set(trajectories.prompts)),
            "sampling_seconds": round(sampled, 1),
            "gradient_seconds": round(time.perf_counter() - started - sampled, 1),
        }
        return estimates, info
    finally:
        agent.close()
        env.close()


def unequal_groups(rewards: torch.Tensor, branches: int) -> str:
    """How many groups of ``branches`` consecutive rewards are not all equal (only those carry a gradient)."""
    grouped = rewards.view(-1, branches)  # (G, K)
    return f"{int((grouped.max(dim=1).values > grouped.min(dim=1).values).sum())} of {grouped.shape[0]}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default="shapes", help="'shapes', a pipeline folder or hub id, or 'tiny' (smoke)")
    parser.add_argument("--prompts", default=None, help="a prompt set or one prompt (None: the world's training set)")
    parser.add_argument("--reward", default=None, help="reward name (None: the world's default)")
    parser.add_argument("--samples", type=positive_int, default=256, help="trajectories sampled from the base policy")
    parser.add_argument("--minibatch", type=positive_int, default=8, help="trajectories per minibatch gradient (b)")
    parser.add_argument("--num-inference-steps", type=positive_int, default=None, help="DDIM steps (None: world's)")
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank of the policy (0: full fine-tune)")
    parser.add_argument(
        "--segments", type=positive_int, default=1, help="also estimate on this many contiguous segments of the steps"
    )
    parser.add_argument(
        "--objective",
        choices=("ddpo", "rwr", "branch"),
        default="ddpo",
        help="ddpo: the policy gradient at ratio 1; rwr: RWR's signed-weight diffusion loss "
        "(agents/algorithms/rwr.py); branch: groups sharing prompt and initial noise, one stochastic step each, "
        "leave-one-out advantages",
    )
    parser.add_argument("--branches", type=positive_int, default=4, help="--objective branch: trajectories per group")
    parser.add_argument(
        "--branch-steps",
        default=None,
        help="--objective branch: schedule step indices 'a-b' (inclusive) a group's stochastic step is drawn from "
        "(None: every stochastic step)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts, initial noise and action noise")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    env = EnvConfig(args.model, args.reward, args.prompts)
    if args.model == "tiny":  # a random tiny pipeline in a temp folder, with the tiny world's reward and prompts
        env = EnvConfig.tiny(reward=args.reward, prompts=args.prompts)
    estimates, info = measure(
        env.model,
        env.prompts,
        env.reward,
        args.samples,
        args.minibatch,
        args.num_inference_steps,
        args.seed,
        args.lora_rank,
        env.latent_bound,
        args.segments,
        args.objective,
        args.branches,
        args.branch_steps,
    )
    result = {
        "objective": args.objective,
        "model": args.model,
        "prompts": args.prompts,
        "samples": args.samples,
        **({"branches": args.branches, "branch_steps": args.branch_steps} if args.objective == "branch" else {}),
        **info,
        "noise_scales": {steps: asdict(estimate) for steps, estimate in estimates.items()},
    }
    prompt_label = args.prompts or "the default prompts"
    print(
        f"{args.model}, {prompt_label}: {info['distinct_prompts']} distinct prompts, reward {info['reward_mean']:.3f}"
    )
    print("| steps | mean cosine of minibatch grads | tr(Sigma) | abs G squared | B_noise |\n|---|---:|---:|---:|---:|")
    for steps, e in estimates.items():
        print(
            f"| {steps} | {e.mean_cosine:+.4f} | {e.trace_sigma:.4g} | {e.true_gradient_sq_norm:.4g} "
            f"| {e.noise_scale:.4g} |"
        )
    print(
        (f"groups with unequal rewards: {info['groups_with_unequal_rewards']}; " if args.objective == "branch" else "")
        + f"{args.samples} samples, minibatches of {args.minibatch}; {info['sampling_seconds']} s sampling, "
        f"{info['gradient_seconds']} s gradients"
    )
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
