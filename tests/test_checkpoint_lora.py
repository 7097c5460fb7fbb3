"""LoRA export: an adapter trained through peft loads into a plain diffusers pipeline with load_lora_weights."""

from __future__ import annotations

import warnings

import pytest
import torch

from agents.checkpoint import export_lora_diffusers, save_checkpoint

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unet_output(unet, generator_seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(generator_seed)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor([10, 700]), text).sample


def test_exported_lora_loads_into_a_plain_pipeline(tiny_pipeline, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(tiny_pipeline, subfolder="unet").eval()
    base = _unet_output(unet)
    # Two adapters on one UNet (as when several policies share it); lora_alpha != r checks the saved scaling.
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=TARGETS), "policy_3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=TARGETS), "other")
    unet.set_adapter("policy_3")
    torch.manual_seed(1)
    with torch.no_grad():  # peft initialises B = 0: perturb it so the adapter changes the output
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.3)
    adapted = _unet_output(unet)
    assert not torch.allclose(adapted, base, atol=1e-3)

    # Exported inside a checkpoint, so that the checkpoint and its LoRA appear together (atomically).
    def export(folder):
        export_lora_diffusers(unet, folder / "lora", adapter_name="policy_3")

    checkpoint = save_checkpoint(tmp_path / "run", "epoch-1", {"epoch": 1}, keep_last=1, write_extra=export)
    assert (checkpoint / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert sorted(p.name for p in checkpoint.iterdir()) == ["lora", "state.json", "tensors.safetensors"]

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline, safety_checker=None)
    assert torch.equal(_unet_output(pipe.unet), base)
    pipe.load_lora_weights(checkpoint / "lora")
    torch.testing.assert_close(_unet_output(pipe.unet), adapted, rtol=1e-5, atol=1e-5)

    # A direct export; re-exporting over an existing folder replaces it.
    weights = export_lora_diffusers(unet, tmp_path / "lora", adapter_name="policy_3")
    assert weights == tmp_path / "lora" / "pytorch_lora_weights.safetensors" and weights.is_file()
    export_lora_diffusers(unet, tmp_path / "lora", adapter_name="policy_3", dtype=torch.float16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora", "run"]  # no temp folder left behind
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(weights).values()} == {torch.float16}


def test_export_refuses_a_unet_without_that_adapter(tiny_pipeline, tmp_path):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(tiny_pipeline, subfolder="unet")
    with pytest.raises(ValueError, match="no peft LoRA adapter"):
        export_lora_diffusers(unet, tmp_path / "lora")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS), "a")
    with pytest.raises(ValueError, match="no adapter 'b'"):
        export_lora_diffusers(unet, tmp_path / "lora", adapter_name="b")
    assert not (tmp_path / "lora").exists()


@pytest.mark.parametrize("name", ["herd-b2-standard-imagereward", "dpok-standard-aesthetic"])
def test_agent_state_through_a_checkpoint_resumes_exactly(tiny_pipeline, tmp_path, name):
    """agent.state_dict() -> save_checkpoint (+ LoRA) -> load_checkpoint -> a fresh agent continues identically."""
    import dataclasses

    from agents import make_agent
    from agents.checkpoint import load_checkpoint
    from agents.config import AgentConfig
    from agents.experiments.presets import agent_config_kwargs, apply_preset, env_settings

    overrides = {"model": tiny_pipeline, "reward": "jpeg-incompressibility", "batch_size": 2, "batches_per_epoch": 1}
    settings = apply_preset(name, {**overrides, "num_inference_steps": 2})

    def new_agent():
        env = dataclasses.replace(env_settings(settings), latent_bound=1e4).make(settings["batch_size"])
        return make_agent(settings["agent"], env, AgentConfig(**agent_config_kwargs(settings)))

    agent, resumed = new_agent(), new_agent()
    try:
        for _ in range(2):  # HERD's replay buffer is full after 2 epochs
            agent.train_epoch()
        lora = agent.policy

        def export(folder):
            export_lora_diffusers(lora.unet, folder / "lora", adapter_name=lora.adapter_name)

        save_checkpoint(tmp_path, "epoch-2", agent.state_dict(), keep_last=1, write_extra=export)
        expected = agent.train_epoch().metrics
        resumed.load_state_dict(load_checkpoint(tmp_path))
        metrics = resumed.train_epoch().metrics
        assert metrics["reward_mean"] == expected["reward_mean"] and metrics["loss"] == expected["loss"]
        trained, continued = agent.policy.named_trainable_parameters(), resumed.policy.named_trainable_parameters()
        assert trained.keys() == continued.keys()
        assert all(torch.equal(trained[k], continued[k]) for k in trained)
    finally:
        agent.close()
        resumed.close()
