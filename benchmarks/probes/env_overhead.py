"""How much does the env add to a bare sampling loop? A benchmark, not a test.

Times, in one process and alternating, ``--rollouts`` batched rollouts of ``DiffusionT2I-v1`` (the vector env
driven by the pretrained model as policy) against a bare loop doing the same model calls with no env:
text encoding, the guided UNet call and DDIM step of every timestep, one VAE decode and one reward call.
Prints both medians and their ratio (target: the env adds <= 10% at batch 32 on the tiny pipeline).

    python benchmarks/probes/env_overhead.py                    # tiny random pipeline, built in a temp folder
    python benchmarks/probes/env_overhead.py --model shapes     # the embedded Shapes world
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffusion_gym.env_config import TINY_LATENT_BOUND, TINY_PROMPTS, TINY_REWARD, EnvConfig
from diffusion_gym.rewards import make_reward
from diffusion_gym.sampling import PretrainedPolicy, ddim_policy_step, guided_noise_prediction


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (a random tiny pipeline), 'shapes', or a folder")
    parser.add_argument("--reward", default=TINY_REWARD, help="registered reward name")
    parser.add_argument("--batch", type=int, default=32, help="episodes per batch (vector env num_envs)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps per episode")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    parser.add_argument("--rollouts", type=int, default=7, help="timed rollouts of each kind (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    prompts = list(TINY_PROMPTS[:2])
    # latent bound: a random tiny UNet drifts; the bound check itself still runs
    settings = {"reward": args.reward, "prompts": prompts, "num_inference_steps": args.steps}
    if args.model == "tiny":
        env_settings = EnvConfig.tiny(**settings)
    else:
        env_settings = EnvConfig(args.model, latent_bound=TINY_LATENT_BOUND, **settings)
    env = env_settings.make(args.batch).unwrapped
    policy = PretrainedPolicy(env, guidance_scale=args.guidance, eta=1.0, seed=0)
    reward_fn = make_reward(args.reward)
    diffusion = env.diffusion
    unet, scheduler = diffusion.unet, diffusion.scheduler

    def env_rollout(seed: int) -> None:
        observation, _ = env.reset(seed=seed)
        terminated = torch.zeros(1, dtype=torch.bool)
        while not bool(terminated.all()):
            observation, _, terminated, _, _ = env.step(policy(observation).action)

    @torch.no_grad()
    def bare_rollout(seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        batch_prompts = [prompts[i % len(prompts)] for i in range(args.batch)]
        embeddings = diffusion.encode_prompts(batch_prompts)  # (B, S, D)
        negative = diffusion.unconditional_embedding  # (1, S, D)
        latents = torch.randn(args.batch, *diffusion.latent_shape, generator=generator)  # (B, C, H, W)
        for timestep in diffusion.timesteps:
            timesteps = timestep.repeat(args.batch)  # (B,)
            noise = guided_noise_prediction(unet, latents, timesteps, embeddings, negative, args.guidance)
            latents = ddim_policy_step(scheduler, noise, latents, timesteps, 1.0, generator).action
        reward_fn(diffusion.decode_latents(latents), batch_prompts)

    env_rollout(0), bare_rollout(0)  # warm-up
    env_times, bare_times = [], []
    for rollout in range(args.rollouts):
        for rollout_fn, times in ((env_rollout, env_times), (bare_rollout, bare_times)):
            start = time.perf_counter()
            rollout_fn(rollout + 1)
            times.append(time.perf_counter() - start)
    env_median, bare_median = statistics.median(env_times), statistics.median(bare_times)
    print(f"model={args.model} batch={args.batch} steps={args.steps} guidance={args.guidance} threads={args.threads}")
    print(f"bare loop : median {bare_median:.3f} s per rollout  (all: {', '.join(f'{t:.3f}' for t in bare_times)})")
    print(f"vector env: median {env_median:.3f} s per rollout  (all: {', '.join(f'{t:.3f}' for t in env_times)})")
    print(f"env / bare: {env_median / bare_median:.3f}  (the env adds {100 * (env_median / bare_median - 1):+.1f}%)")


if __name__ == "__main__":
    main()
