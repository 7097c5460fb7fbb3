"""The policy's compute options on a tiny random pipeline of this module's own (they change the shared UNet):
channels-last weights, the classic attention processor, bfloat16 autocast and ``torch.compile``. Each trains one
tiny epoch, reaches the UNet, computes the same model (up to float rounding; bfloat16 up to its precision), and
bad combinations fail with errors that name them. Also the probe's ``--variants`` parsing.

``torch.compile`` runs with the ``eager`` backend here (dynamo traces the UNet, LoRA adapter toggles and all; no
C++ compilation, which takes minutes on a shared CPU); ``benchmarks/probes/epoch_overhead.py --variants``
exercises the default inductor backend.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import diffusion_gym  # noqa: F401  (registers the env)
from agents import AgentConfig, make_agent
from agents.algorithms.policy import DiffusionPolicy
from agents.envs import TINY_LATENT_BOUND, TINY_REWARD, EnvConfig
from tests._scripts import load_script
from tests.test_precision import PROMPTS, make_env, tiny_config  # the same tiny env, prompts and config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> str:
    """A tiny pipeline of this module's own: the process caches one model per folder, and these tests change
    its UNet's memory format and attention processors."""
    from diffusion_gym.models import build_tiny_pipeline

    return str(build_tiny_pipeline(tmp_path_factory.mktemp("compute") / "tiny-sd", seed=0))


@pytest.fixture(scope="module")
def settings(pipeline: str) -> EnvConfig:
    """The tiny env's settings on this module's own pipeline."""
    return EnvConfig(pipeline, TINY_REWARD, PROMPTS, num_inference_steps=3, latent_bound=TINY_LATENT_BOUND)


@pytest.fixture(scope="module")
def env(settings):
    vector_env = make_env(settings, "float32")
    yield vector_env
    vector_env.close()


@pytest.fixture(autouse=True)
def restore_unet(env):
    """Every test starts from the UNet as loaded (contiguous weights, its own SDPA processors)."""
    unet = env.unwrapped.diffusion.unet
    processors = unet.attn_processors
    yield
    unet.to(memory_format=torch.contiguous_format)
    unet.set_attn_processor(processors)


@pytest.fixture
def eager_compile(monkeypatch):
    """``torch.compile`` with the eager backend (dynamo's tracing and guards, no inductor)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    yield
    torch._dynamo.reset()


def make_policy(env, **options) -> DiffusionPolicy:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DiffusionPolicy(env, lora_rank=2, **options)


def fixed_input(env) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    diffusion = env.unwrapped.diffusion
    latents = torch.randn(2, *diffusion.latent_shape, generator=torch.Generator().manual_seed(1))  # (B, C, H, W)
    timesteps = diffusion.timesteps[1].repeat(2)  # (B,)
    return latents, timesteps, diffusion.encode_prompts(PROMPTS)  # (B, S, D)


@torch.no_grad()
def noise_prediction(policy: DiffusionPolicy, env) -> torch.Tensor:
    policy.apply_unet_settings()  # several policies share the UNet in these tests
    return policy.predict(*fixed_input(env))


def conv_weight(env) -> torch.Tensor:
    return env.unwrapped.diffusion.unet.conv_in.weight  # (C_out, C_in, 3, 3)


# ------------------------------------------------------------------------------------------ one epoch each
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"channels_last": True}, id="channels_last"),
        pytest.param({"attention": "classic"}, id="classic_attention"),
        pytest.param({"autocast_bf16": True}, id="autocast_bf16"),
        # dynamo traces a sampling and a training graph: 2.5 min on the loaded 2 cores (the default suite has
        # test_compiled_policy_scores_like_the_eager_one)
        pytest.param({"compile_unet": True}, id="compile_unet", marks=pytest.mark.slow),
    ],
)
def test_each_compute_option_trains_one_epoch_and_reaches_the_unet(env, eager_compile, options):
    unet = env.unwrapped.diffusion.unet
    output_dtypes = []
    hook = unet.conv_out.register_forward_hook(lambda module, inputs, output: output_dtypes.append(output.dtype))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    agent = make_agent("ddpo", env, tiny_config(**options))
    try:
        metrics = agent.train_epoch().metrics
        assert metrics["num_train_samples"] == 2
        assert all(math.isfinite(value) for value in metrics.values())
        processors = {type(processor) for processor in unet.attn_processors.values()}
        expected_format = torch.channels_last if options.get("channels_last") else torch.contiguous_format
        assert conv_weight(env).is_contiguous(memory_format=expected_format)
        assert processors == ({AttnProcessor} if options.get("attention") == "classic" else {AttnProcessor2_0})
        assert set(output_dtypes) == {torch.bfloat16 if options.get("autocast_bf16") else torch.float32}
        if options.get("compile_unet"):
            assert agent.policy._compiled_unet is not None
            # at least sampling (no grad) and training (grad)
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs >= 2
    finally:
        agent.close()
        hook.remove()


def test_channels_last_and_classic_attention_compute_the_same_model(env):
    default = make_policy(env)
    expected = noise_prediction(default, env)
    for options in ({"channels_last": True}, {"attention": "classic"}):
        policy = make_policy(env, **options)
        output = noise_prediction(policy, env)
        assert output.is_contiguous()  # the DDIM step downstream sees the usual layout
        torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)
        policy.close()
    default.close()


def test_bf16_autocast_is_close_to_float32_but_not_equal(env):
    default = make_policy(env)
    expected = noise_prediction(default, env)
    default.close()
    policy = make_policy(env, autocast_bf16=True)
    output = noise_prediction(policy, env)
    assert output.dtype == torch.float32 and bool(output.isfinite().all())
    difference = (output - expected).abs().max().item()
    assert 0 < difference < 0.05 * expected.abs().max().item()  # bfloat16 has 8 bits of mantissa
    with torch.no_grad():  # the reference pi_pre computes in bfloat16 too: zero KL at init, as in float32
        step = policy(*fixed_input(env), action=torch.zeros(2, *env.unwrapped.diffusion.latent_shape))
        reference = policy.reference(*fixed_input(env), action=torch.zeros_like(step.action))
    torch.testing.assert_close(step.mean, reference.mean, rtol=0, atol=0)
    policy.close()


def test_compiled_policy_scores_like_the_eager_one(env, eager_compile):
    eager, compiled = make_policy(env), make_policy(env, compile_unet=True)
    torch.testing.assert_close(noise_prediction(compiled, env), noise_prediction(eager, env), rtol=1e-5, atol=1e-6)
    latents, timesteps, embeddings = fixed_input(env)
    action = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    steps = [policy(latents, timesteps, embeddings, action) for policy in (eager, compiled)]
    torch.testing.assert_close(steps[1].log_prob, steps[0].log_prob, rtol=1e-5, atol=1e-3)
    steps[1].log_prob.sum().backward()  # the compiled graph's backward reaches the LoRA weights (B's: A's are 0)
    gradients = [p.grad for name, p in compiled.named_trainable_parameters().items() if "lora_B" in name]
    assert gradients and all(g is not None and bool(g.abs().sum() > 0) for g in gradients)
    eager.close(), compiled.close()


def test_a_failed_compile_is_an_error_that_names_the_flag(env, monkeypatch):
    """A backend that cannot compile (on a CPU: no C++ compiler) fails the first call with a message naming the
    option to drop, not torch's bare traceback."""

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=broken_backend))
    policy = make_policy(env, compile_unet=True)
    try:
        with pytest.raises(RuntimeError, match=r"torch.compile of the UNet failed .*drop --compile-unet"):
            noise_prediction(policy, env)
    finally:
        policy.close()


def test_a_policy_puts_the_shared_unet_back_into_its_own_settings(env):
    unet = env.unwrapped.diffusion.unet
    original = unet.attn_processors
    default = make_policy(env)  # leaves the model as loaded and keeps its processors
    assert all(unet.attn_processors[name] is processor for name, processor in original.items())
    changed = make_policy(env, channels_last=True, attention="classic")
    assert conv_weight(env).is_contiguous(memory_format=torch.channels_last)
    assert {type(processor) for processor in unet.attn_processors.values()} == {AttnProcessor}
    default.apply_unet_settings()  # back to the model as loaded: the very same processor objects
    assert conv_weight(env).is_contiguous()
    assert all(unet.attn_processors[name] is processor for name, processor in original.items())
    changed.apply_unet_settings()
    later = make_policy(env)  # a default policy made on the changed UNet puts SDPA and NCHW back too
    assert conv_weight(env).is_contiguous()
    assert {type(processor) for processor in unet.attn_processors.values()} == {AttnProcessor2_0}
    changed.close(), default.close(), later.close()


# ------------------------------------------------------------------------------------------ bad combinations
def test_bf16_autocast_needs_a_float32_model(settings):
    half = make_env(settings, "float16")
    try:
        with pytest.raises(ValueError, match=r"autocast_bf16 .* torch.float16 .*--dtype float32"):
            make_agent("ddpo", half, tiny_config(autocast_bf16=True))
    finally:
        half.close()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"compile_unet": True, "gradient_checkpointing": True}, "compile_unet with gradient_checkpointing"),
        ({"attention": "flash"}, "attention must be one of"),
    ],
)
def test_bad_compute_options_give_clear_errors(env, options, match):
    with pytest.raises(ValueError, match=match):
        make_agent("ddpo", env, tiny_config(**options))
    with pytest.raises(ValueError, match=match):
        make_policy(env, **options)


# ------------------------------------------------------------------------------------------ the probe's variants
def test_probe_variants_map_to_config_fields_and_bad_names_are_refused():
    probe = load_script("benchmarks/probes/epoch_overhead.py")
    assert probe.variant_names("all") == [
        "fp32-eager",
        "channels-last",
        "classic-attention",
        "bf16-autocast",
        "compile",
    ]
    assert probe.variant_fields("fp32-eager") == {}
    assert probe.variant_fields("compile+channels-last") == {"compile_unet": True, "channels_last": True}
    assert set(probe.COMPUTE_FIELDS) == {f for fields in probe.FEATURES.values() for f in fields}
    for field in probe.COMPUTE_FIELDS:  # every variant field is an AgentConfig field
        assert hasattr(AgentConfig(), field)
    for text, match in [
        ("channels-last", "must include 'fp32-eager'"),
        ("fp32-eager,sdpa", "unknown or repeated compute feature in variant 'sdpa'"),
        ("fp32-eager,compile+compile", "unknown or repeated"),
        ("fp32-eager,compile,compile", "repeated variant"),
    ]:
        with pytest.raises(Exception, match=match):
            probe.variant_names(text)
