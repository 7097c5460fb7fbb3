"""The private (or undocumented) attributes of peft, diffusers, Gymnasium and torch that the library relies on, each
checked for the behaviour the library needs. When an upgrade changes one, the failure names the attribute, the
package's version and where the library uses it: fix that code, or lower the package's upper bound in
pyproject.toml (docs/install.md records the versions the suite passed on)."""

from __future__ import annotations

from collections import OrderedDict
from importlib.metadata import version

import pytest
import torch


def require(ok: bool, package: str, attribute: str, used_by: str) -> None:
    """Fail, naming ``attribute``, ``package``'s installed version and the code that relies on it, unless ``ok``."""
    if not ok:
        pytest.fail(
            f"{package} {version(package)}: {attribute} no longer behaves as {used_by} relies on; adapt that code or "
            f"bound {package} below {version(package)} in pyproject.toml",
            pytrace=False,
        )


# ------------------------------------------------------------------------------------------ peft
def test_peft_lora_layers_toggle_through_disable_adapters():
    """agents/algorithms/policy.py (DiffusionPolicy._set_adapter) toggles ``BaseTunerLayer._disable_adapters`` directly:
    peft's ``enable_adapters(False)`` would also switch off ``requires_grad`` of the adapter's weights."""
    peft = pytest.importorskip("peft")
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer, cast_adapter_dtype  # noqa: F401
    except ImportError:
        require(
            False, "peft", "peft.tuners.tuners_utils.BaseTunerLayer / cast_adapter_dtype", "agents/algorithms/policy.py"
        )

    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(proj=torch.nn.Linear(4, 4)))
    config = peft.LoraConfig(r=2, lora_alpha=2, target_modules=["proj"], init_lora_weights=False)  # B != 0
    model = peft.inject_adapter_in_model(config, model, adapter_name="policy")
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    require(len(layers) == 1, "peft", "inject_adapter_in_model on a Linear", "the test's setup")
    layer = layers[0]
    require(
        hasattr(layer, "_disable_adapters"), "peft", "BaseTunerLayer._disable_adapters", "agents/algorithms/policy.py"
    )
    x = torch.randn(3, 4)
    with torch.no_grad():
        base = layer.base_layer(x)
        layer._disable_adapters = False
        adapted = model(x)
        layer._disable_adapters = True
        disabled = model(x)
    used_by = "agents/algorithms/policy.py (DiffusionPolicy._set_adapter / _adapter_enabled)"
    require(not torch.allclose(adapted, base), "peft", "BaseTunerLayer._disable_adapters = False (adapter on)", used_by)
    require(torch.equal(disabled, base), "peft", "BaseTunerLayer._disable_adapters = True (adapter off)", used_by)
    require(
        layer.disable_adapters is True, "peft", "BaseTunerLayer.disable_adapters (reads _disable_adapters)", used_by
    )
    require(
        all(p.requires_grad for name, p in layer.named_parameters() if "lora_" in name),
        "peft",
        "BaseTunerLayer._disable_adapters (must leave requires_grad alone)",
        used_by,
    )


# ------------------------------------------------------------------------------------------ diffusers
def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def test_diffusers_blocks_checkpoint_through_gradient_checkpointing_func():
    """agents/algorithms/policy.py (DiffusionPolicy._checkpointing) sets each block's ``gradient_checkpointing`` flag
    and its ``_gradient_checkpointing_func`` (the function diffusers' blocks call to checkpoint a sub-module), and reads
    ``_supports_gradient_checkpointing`` to refuse a UNet that cannot checkpoint."""
    pytest.importorskip("diffusers")
    unet = tiny_unet()
    used_by = "agents/algorithms/policy.py (DiffusionPolicy gradient checkpointing)"
    require(
        getattr(unet, "_supports_gradient_checkpointing", None) is True,
        "diffusers",
        "UNet2DConditionModel._supports_gradient_checkpointing",
        used_by,
    )
    blocks = [module for module in unet.modules() if hasattr(module, "gradient_checkpointing")]
    require(bool(blocks), "diffusers", "the blocks' gradient_checkpointing flag", used_by)
    called: list[str] = []

    def checkpoint(function, *args, **kwargs):
        called.append(type(function).__name__)
        return function(*args, **kwargs)

    for block in blocks:
        block.gradient_checkpointing = True
        block._gradient_checkpointing_func = checkpoint
    latents, text = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 32)
    unet(latents, torch.tensor([10]), encoder_hidden_states=text).sample.sum().backward()
    require(bool(called), "diffusers", "ModelMixin blocks' _gradient_checkpointing_func", used_by)


# ------------------------------------------------------------------------------------------ Gymnasium
def test_gymnasium_array_conversion_dispatches_the_prompt_array():
    """diffusion_gym/vector_env.py registers its prompt array with ``gymnasium.wrappers.array_conversion.
    array_conversion`` (a ``functools.singledispatch``, not documented API), so that NumpyToTorch passes prompts
    through. Without array-api-compat Gymnasium has no array conversion at all, and the env skips this."""
    pytest.importorskip("array_api_compat")
    try:
        from gymnasium.wrappers.array_conversion import array_conversion
    except ImportError:
        require(
            False, "gymnasium", "gymnasium.wrappers.array_conversion.array_conversion", "diffusion_gym/vector_env.py"
        )
    from diffusion_gym.vector_env import PromptArray, prompt_array

    used_by = "diffusion_gym/vector_env.py (_register_prompt_pass_through)"
    require(hasattr(array_conversion, "register"), "gymnasium", "array_conversion.register (singledispatch)", used_by)
    require(PromptArray in array_conversion.registry, "gymnasium", "array_conversion.registry", used_by)
    prompts = prompt_array(["a cat", "a dog"])
    require(array_conversion(prompts, xp=None) is prompts, "gymnasium", "array_conversion(value, xp, device)", used_by)


# ------------------------------------------------------------------------------------------ torch
def test_torch_compile_keeps_the_module_as_orig_mod():
    """agents/checkpoint.py (export of the LoRA) unwraps a ``torch.compile``d UNet through ``_orig_mod``."""
    module = torch.nn.Linear(2, 2)
    compiled = torch.compile(module)  # compiles on the first call only: nothing is compiled here
    require(
        getattr(compiled, "_orig_mod", None) is module, "torch", "OptimizedModule._orig_mod", "agents/checkpoint.py"
    )
