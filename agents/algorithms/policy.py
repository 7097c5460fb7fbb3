r"""The trainable diffusion policy: the env's UNet plus a LoRA adapter (or fully fine-tuned), guided DDIM steps.

:math:`\pi_\theta(x_{t-1} \mid x_t, c) = \mathcal N(\mu_\theta(x_t, t, c), \sigma_t^2 I)`, with
:math:`\mu_\theta` the DDIM mean computed from the classifier-free-guided noise prediction
:math:`\hat\epsilon = \epsilon_\varnothing + w(\epsilon_\theta(x_t, t, c) - \epsilon_\varnothing)`,
:math:`\epsilon_\varnothing = \epsilon_\theta(x_t, t, \varnothing)`.

* **LoRA** (``lora_rank > 0``): a peft adapter on the attention projections ``to_q, to_k, to_v, to_out.0`` of
  the env's (shared, frozen) UNet. peft zero-initialises ``B``, so the policy starts exactly at the
  pretrained model. The **reference** policy :math:`\pi_{pre}` is the same UNet with the adapter disabled:
  no second copy of the weights.
* **Full fine-tune** (``lora_rank == 0``): the policy trains a private copy of the UNet; the env's UNet stays
  untouched and is the reference.

The env's model is loaded once per process and shared, so several policies can live on one UNet: each
adds its own uniquely named adapter and enables it only for the duration of its own forward passes; outside
them the UNet is left with every adapter disabled (the pretrained model, as any other user expects).
Call :meth:`DiffusionPolicy.close` to remove the adapter when done.

**Mixed precision.** When the env's model is in float16 or bfloat16 (``--dtype``), the frozen UNet stays in that
dtype but the trainable weights are float32: the LoRA weights are upcast (peft then computes the adapter's
branch in float32 and adds it to the half-precision base output); a full fine-tune trains a float32 copy of the
UNet and runs its forward under ``torch.autocast`` in the model's dtype. The noise prediction is cast to float32
before the DDIM step, so means, log-probs and everything downstream (ratios, losses) are float32.

**Gradient checkpointing** (``gradient_checkpointing=True``): the UNet's blocks recompute their activations in
the backward pass instead of storing them. It is switched on only for this policy's own forward passes with
gradients (the UNet may be shared), and the recomputation, which runs later in ``backward()``, re-enables this
policy's adapter for the block it recomputes: the gradients equal those without checkpointing.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.utils.checkpoint

from agents.algorithms.buffers import Trajectories
from agents.algorithms.math import gaussian_step_kl
from agents.config import ATTENTION_PROCESSORS
from diffusion_gym.ddim import ddim_step_coefficients
from diffusion_gym.sampling import PolicyStep, ddim_policy_step, guided_noise_prediction

LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
HALF_DTYPES = (torch.float16, torch.bfloat16)


def is_compile_failure(error: BaseException) -> bool:
    """Whether ``error`` is torch.compile failing to build the UNet (a backend or C++ compiler error). Imports
    torch's compiler modules, which only a compiled UNet has loaded already (they take seconds to import)."""
    import torch._dynamo.exc
    import torch._inductor.exc

    return isinstance(error, (torch._dynamo.exc.BackendCompilerFailed, torch._inductor.exc.CppCompileError))


_ADAPTER_IDS = itertools.count()


class DiffusionPolicy:
    """A guided DDIM policy on the env's UNet; trainable through LoRA or in full."""

    def __init__(
        self,
        env,
        lora_rank: int = 8,
        guidance_scale: float | None = None,
        eta: float = 1.0,
        gradient_checkpointing: bool = False,
        *,
        channels_last: bool = False,
        attention: str = "sdpa",
        autocast_bf16: bool = False,
        compile_unet: bool = False,
    ):
        if lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = full fine-tune), got {lora_rank}")
        if eta <= 0:
            raise ValueError(f"eta must be > 0: with eta = 0 every DDIM step is deterministic (no policy), got {eta}")
        diffusion = env.unwrapped.diffusion  # the env's public interface for policies
        world = diffusion.world
        self.diffusion = diffusion
        self.scheduler = diffusion.scheduler
        self.eta = float(eta)
        self.guidance_scale = float(world.guidance_scale if guidance_scale is None else guidance_scale)
        self.lora_rank = lora_rank
        self.negative_embeddings = diffusion.unconditional_embedding  # (1, S, D): the CFG null prompt
        self.reference_unet = diffusion.unet
        self.model_dtype = self.reference_unet.dtype  # the frozen model's (env --dtype)
        self.adapter_name: str | None = None
        self._lora_layers: list = []
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self._check_compute_options(attention, autocast_bf16, compile_unet)  # before an adapter is added
        if lora_rank > 0:
            self.unet = self.reference_unet
            self._add_adapter(lora_rank)
        else:  # a private float32 copy (mixed precision: its forward is autocast to model_dtype, see _autocast)
            self.unet = copy.deepcopy(self.reference_unet).float().requires_grad_(True)
        self.unet.eval()  # no dropout: the log-probs must be exact
        if self.gradient_checkpointing and not getattr(self.unet, "_supports_gradient_checkpointing", False):
            raise ValueError(f"{type(self.unet).__name__} does not support gradient checkpointing")
        # the UNet's blocks that can checkpoint (diffusers: a ``gradient_checkpointing`` flag on each)
        self._checkpointable = [m for m in self.unet.modules() if hasattr(m, "gradient_checkpointing")]
        self.channels_last = bool(channels_last)
        self.attention = attention
        self.autocast_bf16 = bool(autocast_bf16)
        self._processors = self._attention_processors(attention)  # kept: re-applying restores the same objects
        self.apply_unet_settings()
        # compiled lazily by torch on the first call; parameters and submodules are the UNet's own
        self._compiled_unet = torch.compile(self.unet) if compile_unet else None

    # ------------------------------------------------------------------------------ compute options
    def _check_compute_options(self, attention: str, autocast_bf16: bool, compile_unet: bool) -> None:
        if attention not in ATTENTION_PROCESSORS:
            raise ValueError(f"attention must be one of {ATTENTION_PROCESSORS}, got {attention!r}")
        if attention == "classic" and not hasattr(self.reference_unet, "set_attn_processor"):
            raise ValueError(f"attention='classic' needs a diffusers UNet, got {type(self.reference_unet).__name__}")
        if autocast_bf16 and self.model_dtype != torch.float32:
            raise ValueError(
                f"autocast_bf16 computes a float32 model in bfloat16, but the env's model is {self.model_dtype} "
                "(use --dtype float32 with --autocast-bf16, or --dtype bfloat16 alone)"
            )
        if compile_unet and self.gradient_checkpointing:
            raise ValueError(
                "compile_unet with gradient_checkpointing is not supported: the checkpointed blocks switch this "
                "policy's adapter from inside the backward pass, which the compiled graph does not see"
            )

    def _attention_processors(self, attention: str) -> dict | None:
        """The processor of each attention layer for ``attention`` (None: the UNet has none to set).

        The UNet's own processors are reused where they already are the wanted kind, so that the default leaves
        the model untouched and re-applying a choice restores the very same objects (a compiled UNet's guards
        check them)."""
        if not hasattr(self.unet, "attn_processors"):
            return None
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        kind = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
        return {
            name: processor if type(processor) is kind else kind()
            for name, processor in self.unet.attn_processors.items()
        }

    def apply_unet_settings(self) -> None:
        """Put the UNet the policy trains into this policy's memory format and attention processors (a no-op
        when they already are)."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if any(p.dim() == 4 and not p.is_contiguous(memory_format=memory_format) for p in self.unet.parameters()):
            self.unet.to(memory_format=memory_format)
        if self._processors is not None:
            current = self.unet.attn_processors
            if any(current[name] is not processor for name, processor in self._processors.items()):
                self.unet.set_attn_processor(dict(self._processors))

    # ------------------------------------------------------------------------------ adapter handling
    def _add_adapter(self, rank: int) -> None:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer, cast_adapter_dtype

        self.adapter_name = f"policy_{next(_ADAPTER_IDS)}"
        config = LoraConfig(
            r=rank, lora_alpha=rank, lora_dropout=0.0, init_lora_weights=True, target_modules=list(LORA_TARGET_MODULES)
        )
        with warnings.catch_warnings():  # peft warns that the UNet already holds another policy's adapter
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            self.unet.add_adapter(config, adapter_name=self.adapter_name)  # B = 0: starts at the pretrained model
        cast_adapter_dtype(self.unet, self.adapter_name)  # float16/bfloat16 LoRA weights -> float32 (mixed precision)
        self._lora_layers = [m for m in self.unet.modules() if isinstance(m, BaseTunerLayer)]
        self._set_adapter(False)

    def _set_adapter(self, enabled: bool) -> None:
        """Enable this policy's adapter (and only it) or disable every adapter: a cheap loop over LoRA layers.

        peft's ``enable_adapters(False)`` also sets ``requires_grad=False`` on the adapter weights, which would
        drop the gradients of a graph built while they were enabled; so only the layer's
        ``_disable_adapters`` flag is toggled here, and ``set_adapter`` is called when another policy's adapter
        was the active one (it makes only the active adapter's weights require grad).
        """
        for layer in self._lora_layers:
            if enabled and list(layer.active_adapters) != [self.adapter_name]:
                layer.set_adapter(self.adapter_name)
            layer._disable_adapters = not enabled

    def _adapter_enabled(self) -> bool:
        """Whether this policy's adapter is the enabled one right now (inside its own forward pass)."""
        layer = self._lora_layers[0]
        return not layer._disable_adapters and list(layer.active_adapters) == [self.adapter_name]

    @contextmanager
    def _adapter(self, enabled: bool) -> Iterator[None]:
        if self.adapter_name is None:
            yield
            return
        self._set_adapter(enabled)
        try:
            yield
        finally:
            self._set_adapter(False)

    # ------------------------------------------------------------------------------ precision and memory
    def _autocast(self, unet: torch.nn.Module) -> contextlib.AbstractContextManager:
        """``autocast_bf16``: every forward in bfloat16. Otherwise a full fine-tune's float32 UNet computes in the
        model's half dtype (LoRA needs nothing: the base is half; nor does the reference, the half env UNet)."""
        if self.autocast_bf16:
            return torch.autocast(device_type=unet.device.type, dtype=torch.bfloat16)
        if unet is self.unet and self.adapter_name is None and self.model_dtype in HALF_DTYPES:
            return torch.autocast(device_type=self.unet.device.type, dtype=self.model_dtype)
        return contextlib.nullcontext()

    def _unet_call(self, unet: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        """``unet``'s float32 noise prediction (``guided_noise_prediction``), through the compiled UNet when there
        is one, in this policy's precision; contiguous whatever the memory format the UNet computes in."""
        model = self._compiled_unet if unet is self.unet and self._compiled_unet is not None else unet
        try:
            with self._autocast(unet):
                noise = guided_noise_prediction(model, *args, **kwargs)  # (B, C, H, W), float32
        except Exception as error:
            if model is unet or not is_compile_failure(error):
                raise
            raise RuntimeError(
                "torch.compile of the UNet failed (compile_unet; on a CPU it needs a C++ compiler and the Python "
                "headers); run without it (drop --compile-unet: the same math, about 20% slower per epoch): "
                f"{type(error).__name__}: {error}"
            ) from error
        return noise.contiguous() if self.channels_last else noise

    @contextmanager
    def _checkpointing(self) -> Iterator[None]:
        """Set the UNet's gradient checkpointing to this policy's choice for one forward pass, then restore it.

        Only forward passes with gradients checkpoint (diffusers checks ``torch.is_grad_enabled()``).
        """
        if not torch.is_grad_enabled() or not self._checkpointable:
            yield
            return
        saved = [
            (m, m.gradient_checkpointing, m.__dict__.get("_gradient_checkpointing_func")) for m in self._checkpointable
        ]
        for module in self._checkpointable:
            module.gradient_checkpointing = self.gradient_checkpointing
            module._gradient_checkpointing_func = self._checkpoint
        try:
            yield
        finally:
            for module, flag, function in saved:
                module.gradient_checkpointing = flag
                if function is None:
                    module.__dict__.pop("_gradient_checkpointing_func", None)
                else:
                    module._gradient_checkpointing_func = function

    def _checkpoint(self, block: torch.nn.Module, *args, **kwargs):
        """diffusers' ``_gradient_checkpointing_func``: ``torch.utils.checkpoint`` of ``block`` with this adapter on."""
        return torch.utils.checkpoint.checkpoint(self._run_block, block, *args, use_reentrant=False, **kwargs)

    def _run_block(self, block: torch.nn.Module, *args, **kwargs):
        """Run ``block`` with this policy's adapter enabled: a no-op in the forward pass, but the recomputation
        happens in ``backward()``, after the forward pass has disabled the adapter again."""
        if self.adapter_name is None or self._adapter_enabled():
            return block(*args, **kwargs)
        self._set_adapter(True)
        try:
            return block(*args, **kwargs)
        finally:
            self._set_adapter(False)

    def close(self) -> None:
        """Remove this policy's adapter from the shared UNet (the policy is unusable afterwards)."""
        if self.adapter_name is not None and self.adapter_name in getattr(self.unet, "peft_config", {}):
            with warnings.catch_warnings():  # "adapter ... was active which is now deleted": we disable it anyway
                warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
                self.unet.delete_adapters(self.adapter_name)
        self._lora_layers = []
        self.adapter_name = None

    # ------------------------------------------------------------------------------ parameters
    def named_trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters the optimiser updates: this adapter's LoRA weights, or the whole private UNet.

        Names do not contain the (process-specific) adapter name, so checkpoints load into any process:
        ``...attn1.to_q.lora_A.weight``.
        """
        if self.adapter_name is None:
            return dict(self.unet.named_parameters())
        marker = f".{self.adapter_name}."
        return {name.replace(marker, "."): p for name, p in self.unet.named_parameters() if marker in name}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        parameters = list(self.named_trainable_parameters().values())
        for parameter in parameters:
            parameter.requires_grad_(True)
        return parameters

    # ------------------------------------------------------------------------------ the policy
    def stochastic_steps(self) -> torch.Tensor:
        """``(T,)`` bool: the env's schedule steps at which this policy has a density (``sigma_t >= MIN_STD`` at
        its ``eta``), as :func:`~diffusion_gym.sampling.ddim_policy_step` flags them: the only ones trained."""
        scheduler = self.scheduler
        return torch.tensor(
            [bool(ddim_step_coefficients(scheduler, t, self.eta).is_stochastic) for t in self.diffusion.timesteps]
        )

    def _step(
        self,
        unet: torch.nn.Module,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeddings: torch.Tensor,
        generator: torch.Generator | None,
        action: torch.Tensor | None,
    ) -> PolicyStep:
        noise = self._unet_call(
            unet, latents, timesteps, prompt_embeddings, self.negative_embeddings, self.guidance_scale
        )  # (B, C, H, W), float32
        return ddim_policy_step(self.scheduler, noise, latents, timesteps, self.eta, generator, action)

    def __call__(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeddings: torch.Tensor,
        action: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PolicyStep:
        r"""One step of :math:`\pi_\theta`: sample an action (``action=None``) or score the given one.

        ``latents`` :math:`x_t` ``(B, C, H, W)``, ``timesteps`` ``(B,)``, ``prompt_embeddings`` ``(B, S, D)``.
        Gradients flow to the trainable parameters unless called under ``torch.no_grad()``.
        """
        with self._adapter(True), self._checkpointing():
            return self._step(self.unet, latents, timesteps, prompt_embeddings, generator, action)

    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        r"""The UNet's conditional output (no guidance; the scheduler's ``prediction_type``: :math:`\epsilon` or
        :math:`v`), float32, ``(B, C, H, W)``, at any training timestep: what the diffusion training loss regresses.
        ``latents`` is a noised :math:`x_t` ``(B, C, H, W)``, ``timesteps`` ``(B,)``. Gradients flow to the trainable
        parameters unless called under ``torch.no_grad()``.
        """
        with self._adapter(True), self._checkpointing():
            # guidance scale 1: one UNet call on the conditional batch
            return self._unet_call(self.unet, latents, timesteps, prompt_embeddings, self.negative_embeddings, 1.0)

    @torch.no_grad()
    def reference(
        self, latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeddings: torch.Tensor, action: torch.Tensor
    ) -> PolicyStep:
        r"""The pretrained policy :math:`\pi_{pre}` scoring ``action`` (the UNet with the adapter disabled)."""
        with self._adapter(False):
            return self._step(self.reference_unet, latents, timesteps, prompt_embeddings, None, action)

    @torch.no_grad()
    def kl_to_reference(self, samples: Trajectories) -> torch.Tensor:
        r"""The KL of this policy's trajectory distribution from the pretrained one's, along ``samples``, ``(B,)``
        in nats per trajectory.

        Both policies are Gaussian at each stochastic step, with the same :math:`\sigma_t` (it depends on the
        schedule and :math:`\eta` only): :math:`\pi_\theta(x_{t-1} \mid x_t, c) = \mathcal N(\mu_\theta(x_t, c, t),
        \sigma_t^2 I)` and :math:`\pi_{pre}(x_{t-1} \mid x_t, c) = \mathcal N(\mu_{pre}(x_t, c, t), \sigma_t^2 I)`,
        from the same initial noise :math:`x_T`. By the chain rule of the KL over the Markov chain,

        .. math::
            \mathrm{KL}(p_\theta(x_{0:T} \mid c) \,\|\, p_{pre}(x_{0:T} \mid c))
            = \mathbb E_{\tau \sim p_\theta}\Big[\sum_{t\ \mathrm{stochastic}}
              \mathrm{KL}(\mathcal N(\mu_\theta, \sigma_t^2 I) \,\|\, \mathcal N(\mu_{pre}, \sigma_t^2 I))\Big]
            = \mathbb E_{\tau \sim p_\theta}\Big[\sum_t \frac{\lVert\mu_\theta - \mu_{pre}\rVert^2}{2\sigma_t^2}\Big]

        (summed over latent dims, the project's convention). Only the stochastic steps count, as in training: a
        deterministic step (:math:`\sigma_t <` ``MIN_STD``) has no density, and the KL is that of the policy's
        transitions, the steps it is trained on. This returns the inner sum of each trajectory, exact at its
        recorded states :math:`x_t` (:func:`agents.algorithms.math.gaussian_step_kl` per step); its mean over
        trajectories sampled from this policy is a Monte Carlo estimate of the KL. Two UNet passes per stochastic step
        (this policy's and the reference's); no RNG is drawn from.

        ``samples``: trajectories recorded with this policy's schedule (``ValueError`` if their stochastic steps
        differ from :meth:`stochastic_steps`).
        """
        stochastic = self.stochastic_steps()  # (T,) bool
        if not torch.equal(samples.stochastic.cpu(), stochastic):
            raise ValueError(
                f"the trajectories' stochastic steps {samples.stochastic.tolist()} are not this policy's "
                f"{stochastic.tolist()}: recorded with another schedule or eta"
            )
        device = samples.latents.device
        total = torch.zeros(len(samples), device=device)  # (B,)
        for j in stochastic.nonzero().flatten().tolist():
            timesteps = samples.timesteps[j].to(device).repeat(len(samples))  # (B,)
            states = (samples.latents[:, j], timesteps, samples.prompt_embeddings)  # x_t (B, C, H, W), t, c
            step = self(*states, samples.next_latents[:, j])  # mu_theta(x_t, c, t), sigma_t
            reference = self.reference(*states, samples.next_latents[:, j])  # mu_pre(x_t, c, t)
            total += gaussian_step_kl(step.mean, reference.mean, step.std_dev_t)  # (B,)
        return total

    def sample(self, observation: dict[str, torch.Tensor], generator: torch.Generator) -> PolicyStep:
        """Sample an action for an env observation, without gradients."""
        with torch.no_grad():
            return self(
                observation["latent"], observation["timestep"][:, 0], observation["prompt_embedding"], None, generator
            )
