"""The full-scale rewards load through their real loaders and score images, offline, with random weights.

One module fixture writes the local files the loaders read (a random ImageReward checkpoint with a small
med_config and a generated BERT vocab; a tiny open_clip model in open_clip's ``local-dir`` format; random
aesthetic-MLP weights), points the ``DIFFUSION_GYM_*`` variables at them and builds the three registered
rewards through ``make_reward``. The ViT-L image tower of ImageReward is fixed by the package, so that
part is full size (~300M parameters).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffusion_gym.rewards import make_reward, registry, reward_spec
from diffusion_gym.rewards._common import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, score_in_batches
from diffusion_gym.rewards.aesthetic import AestheticMLP, AestheticScorer
from diffusion_gym.rewards.async_scoring import AsyncRewardScorer
from diffusion_gym.rewards.clipscore import CLIPScore
from diffusion_gym.rewards.imagereward import ImageRewardScorer

os.environ["HF_HUB_OFFLINE"] = "1"

PROMPTS = ["a cat on the beach", "the dog", "cats and dogs"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "cat", "dog", "the", "on"]
VOCAB += ["beach", "and", "##s"]

# BLIP's med_config.json with 2 layers instead of 12 (the test's only shrinkage; the code reads any config).
MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,  # fixed by ImageReward's MLP(768)
    "initializer_range": 0.02,
    "intermediate_size": 1024,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 64,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": len(VOCAB) + 2,  # + [DEC] and [ENC]
    "encoder_width": 1024,
    "add_cross_attention": True,
}

# A tiny open_clip model (open_clip's local-dir format); embed_dim 768 as the aesthetic MLP needs.
OPEN_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def write_imagereward_folder(folder: Path) -> Path:
    """A random-weight ImageReward: ``ImageReward.pt``, ``med_config.json``, ``tokenizer/vocab.txt``."""
    import importlib

    from diffusion_gym.rewards._transformers_compat import import_image_reward
    from diffusion_gym.rewards.imagereward import _tokenizer_from

    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (folder / "med_config.json").write_text(json.dumps(MED_CONFIG))
    import_image_reward()
    model_cls = importlib.import_module("ImageReward.ImageReward").ImageReward
    torch.manual_seed(0)
    with _tokenizer_from(str(folder / "tokenizer")):
        model = model_cls(med_config=str(folder / "med_config.json"), device="cpu")
    with torch.no_grad():  # the default init makes the head nearly constant; spread the scores out
        for param in model.mlp.parameters():
            param.normal_(0.0, 0.05)
    torch.save(model.state_dict(), folder / "ImageReward.pt")
    return folder


def write_open_clip_folder(folder: Path) -> Path:
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    torch.manual_seed(1)
    model = open_clip.create_model(f"local-dir:{folder}")
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


def write_aesthetic_mlp(path: Path) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(2)
    save_file(AestheticMLP().state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_open_clip_folder(tmp_path_factory.mktemp("open-clip") / "tiny")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, open_clip_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("full-scale-rewards")
    return {
        "imagereward": write_imagereward_folder(root / "imagereward"),
        "open_clip": open_clip_dir,
        "aesthetic_mlp": write_aesthetic_mlp(root / "aesthetic-mlp.safetensors"),
    }


@pytest.fixture(scope="module")
def rewards(files: dict[str, Path]) -> Iterator[dict[str, object]]:
    """The registered rewards built by ``make_reward`` from the environment (fresh registry cache)."""
    clip_dir = f"local-dir:{files['open_clip']}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_CACHE", {})
        mp.setenv("DIFFUSION_GYM_IMAGEREWARD_PATH", str(files["imagereward"]))
        mp.setenv("DIFFUSION_GYM_AESTHETIC_PATH", str(files["aesthetic_mlp"]))
        mp.setenv("DIFFUSION_GYM_AESTHETIC_CLIP_MODEL", clip_dir)
        mp.setenv("DIFFUSION_GYM_CLIPSCORE_MODEL", clip_dir)
        built = {name: make_reward(name, "cpu") for name in ("imagereward", "aesthetic", "clipscore")}
        built["sum"] = make_reward("imagereward:1.0,aesthetic:0.1,clipscore:-2", "cpu")
        yield built


def random_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1], on the 8-bit grid (so that a PIL round trip is exact)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), generator=generator).float() / 255


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())


def check_scores(scores: torch.Tensor, batch: int) -> None:
    assert scores.shape == (batch,)
    assert scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert torch.isfinite(scores).all()


# --- imagereward -----------------------------------------------------------------------------------------


def test_score_in_batches_scores_each_batch_with_its_prompts() -> None:
    images = torch.arange(5, dtype=torch.float16).reshape(5, 1, 1, 1).expand(5, 3, 2, 2)  # image i is all i
    calls = []

    def score(batch: torch.Tensor, prompts) -> torch.Tensor:
        calls.append((batch.shape[0], prompts))
        return batch[:, 0, 0, 0, None] * 10  # (b, 1): a column, as a reward head returns

    scores = score_in_batches(images, list("abcde"), 2, score)
    assert calls == [(2, ["a", "b"]), (2, ["c", "d"]), (1, ["e"])]
    assert scores.dtype == torch.float32 and scores.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    calls.clear()
    assert score_in_batches(images, None, 3, score).shape == (5,) and calls == [(3, None), (2, None)]
    with pytest.raises(ValueError, match="5 images but 4 prompts"):
        score_in_batches(images, list("abcd"), 2, score)


def test_imagereward_scores_like_the_package(rewards: dict[str, object]) -> None:
    reward = rewards["imagereward"]
    assert isinstance(reward, ImageRewardScorer)
    images = random_images(2, 224, 224)
    scores = reward(images, PROMPTS[:2])
    check_scores(scores, 2)
    # The package's own single-image path (PIL preprocessing, its tokenizer call) gives the same number.
    expected = reward.model.score(PROMPTS[1], to_pil(images[1]))
    assert scores[1].item() == pytest.approx(expected, abs=1e-4)
    assert abs(scores[0] - scores[1]) > 1e-4  # the random model is not constant


def test_imagereward_any_size_and_dtype(rewards: dict[str, object]) -> None:
    reward = rewards["imagereward"]
    images = random_images(1, 96, 128, seed=3).double()  # resized and center-cropped on-device
    check_scores(reward(images, PROMPTS[:1]), 1)
    with pytest.raises(ValueError, match="prompts"):
        reward(images, PROMPTS)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        reward(images[0], PROMPTS[:1])


def test_imagereward_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="DIFFUSION_GYM_IMAGEREWARD_PATH"):
        ImageRewardScorer.from_folder(tmp_path / "nowhere", env_var="DIFFUSION_GYM_IMAGEREWARD_PATH")
    folder = tmp_path / "ir"
    folder.mkdir()
    (folder / "med_config.json").write_text(json.dumps(MED_CONFIG))
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("\n".join(VOCAB))
    with pytest.raises(FileNotFoundError, match=r"ImageReward\.pt"):
        ImageRewardScorer.from_folder(folder)
    (folder / "ImageReward.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"ImageReward\.pt"):
        ImageRewardScorer.from_folder(folder)
    # A pickle of arbitrary objects is refused (weights_only), not executed.
    torch.save({"blip": Unpicklable()}, folder / "ImageReward.pt")
    with pytest.raises(ValueError, match=r"ImageReward\.pt"):
        ImageRewardScorer.from_folder(folder)
    torch.save({"blip.something": torch.zeros(1)}, folder / "ImageReward.pt")
    with pytest.warns(UserWarning, match="unexpected"), pytest.raises(ValueError, match="not an ImageReward"):
        ImageRewardScorer.from_folder(folder)


class Unpicklable:
    """Stands for an arbitrary pickled object (``weights_only`` loading must refuse it)."""


# --- clipscore --------------------------------------------------------------------------------------------


def reference_cosines(model_dir: Path, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """CLIP cosine similarity with open_clip's own (PIL) preprocessing and tokenizer."""
    import open_clip

    name = f"local-dir:{model_dir}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    with torch.no_grad():
        pixels = torch.stack([preprocess(to_pil(image)) for image in images])
        image_emb = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        text_emb = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    return (image_emb * text_emb).sum(-1)


def test_clipscore_matches_open_clip(rewards: dict[str, object], files: dict[str, Path]) -> None:
    reward = rewards["clipscore"]
    assert isinstance(reward, CLIPScore) and reward.weight == 2.5
    images = random_images(3, 32, 32, seed=4)  # the model's input size: no resizing on either side
    scores = reward(images, PROMPTS)
    check_scores(scores, 3)
    cosines = reference_cosines(files["open_clip"], images, PROMPTS)
    torch.testing.assert_close(scores, 2.5 * cosines.clamp(min=0), atol=1e-5, rtol=1e-5)
    raw = (reward.encoder.encode_images(images) * reward.encoder.encode_texts(PROMPTS)).sum(-1)
    torch.testing.assert_close(raw, cosines, atol=1e-5, rtol=1e-5)
    assert ((scores >= 0) & (scores <= 2.5)).all()


def test_clipscore_on_device_resize_close_to_pil(rewards: dict[str, object], files: dict[str, Path]) -> None:
    reward = rewards["clipscore"]
    images = random_images(2, 48, 64, seed=5)  # bicubic resize of the short side, then center crop
    raw = (reward.encoder.encode_images(images) * reward.encoder.encode_texts(PROMPTS[:2])).sum(-1)
    # measured: 6.3e-5 (PIL's 8-bit rounding; the hand-written resize before the torchvision one: 4.6e-3)
    torch.testing.assert_close(raw, reference_cosines(files["open_clip"], images, PROMPTS[:2]), atol=1e-3, rtol=0)


def test_clipscore_missing_and_corrupt_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="DIFFUSION_GYM_CLIPSCORE_PRETRAINED"):
        CLIPScore("ViT-B-32", str(tmp_path / "missing.safetensors"), env_vars=["DIFFUSION_GYM_CLIPSCORE_PRETRAINED"])
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        CLIPScore(f"local-dir:{tmp_path}", None)
    folder = tmp_path / "corrupt"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    (folder / "open_clip_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        CLIPScore(f"local-dir:{folder}", None)


# --- aesthetic -------------------------------------------------------------------------------------------


def test_aesthetic_is_the_mlp_on_normalised_clip_embeddings(rewards: dict[str, object]) -> None:
    reward = rewards["aesthetic"]
    assert isinstance(reward, AestheticScorer)
    images = random_images(3, 40, 40, seed=6)
    scores = reward(images, PROMPTS)
    check_scores(scores, 3)
    assert torch.equal(scores, reward(images, ["", "", ""]))  # the prompt is ignored
    with torch.no_grad():
        embeddings = reward.encoder.model.encode_image(reward.encoder.preprocess(images))
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        expected = reward.mlp(embeddings).squeeze(1)
    torch.testing.assert_close(scores, expected)
    assert scores.std() > 0


def test_aesthetic_defaults_and_architecture() -> None:
    import inspect

    import open_clip

    defaults = inspect.signature(AestheticScorer).parameters
    assert defaults["clip_model"].default == "ViT-L-14" and defaults["clip_pretrained"].default == "openai"
    assert open_clip.get_model_config("ViT-L-14")["embed_dim"] == 768
    shapes = [tuple(p.shape) for p in AestheticMLP().parameters() if p.ndim == 2]
    assert shapes == [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]
    assert list(AestheticMLP().state_dict()) == [f"layers.{i}.{k}" for i in (0, 2, 4, 6, 7) for k in ("weight", "bias")]


def test_aesthetic_missing_corrupt_and_wrong_weights(tmp_path: Path, open_clip_dir: Path) -> None:
    clip_dir = f"local-dir:{open_clip_dir}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFUSION_GYM_AESTHETIC_PATH", str(tmp_path / "mlp.safetensors"))
        with pytest.raises(FileNotFoundError, match="DIFFUSION_GYM_AESTHETIC_PATH"):
            AestheticScorer.from_env()
    corrupt = tmp_path / "mlp.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"mlp\.safetensors"):
        AestheticScorer(corrupt, clip_dir, None)
    wrong = tmp_path / "wrong.pt"
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pt"):
        AestheticScorer(wrong, clip_dir, None)
    # A torch state dict (the hub's .pth format) loads as well as safetensors.
    as_pth = tmp_path / "aesthetic-model.pth"
    torch.save(AestheticMLP().state_dict(), as_pth)
    check_scores(AestheticScorer(as_pth, clip_dir, None)(random_images(1, 32, 32), ["x"]), 1)


def test_offline_without_local_files_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("DIFFUSION_GYM_")]:
        monkeypatch.delenv(var)
    expected = {
        "imagereward": "DIFFUSION_GYM_IMAGEREWARD_PATH",
        "aesthetic": "DIFFUSION_GYM_AESTHETIC_PATH",
        "clipscore": "DIFFUSION_GYM_CLIPSCORE_MODEL",
    }
    for name, var in expected.items():  # HF_HUB_OFFLINE=1: the hub default fails fast, with a hint
        with pytest.raises(RuntimeError, match=var):
            reward_spec(name).factory(torch.device("cpu"))


# --- preprocessing: torchvision transforms against the hand-written code they replaced --------------------

SQUARE_SIZES = (32, 224, 512)  # the Shapes world's images, the reward models' inputs, Stable Diffusion's


def earlier_preprocess(
    images: torch.Tensor, size: int, interpolation: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """The rewards' hand-written preprocessing up to 4e39242 (``_common.resize_center_crop`` then ``normalize``):
    the shorter side resized to ``size`` with the longer one *rounded*, a crop at the *floor* of the margin."""
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        images = torch.nn.functional.interpolate(images, size=(new_h, new_w), mode=interpolation, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    images = images[..., top : top + size, left : left + size].clamp(0, 1)
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_imagereward_preprocessing_is_the_earlier_one(rewards: dict[str, object]) -> None:
    reward = rewards["imagereward"]
    for side in SQUARE_SIZES:  # up-sampled, as is, down-sampled
        images = random_images(1, side, side, seed=side)
        earlier = earlier_preprocess(images, 224, "bicubic", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        assert torch.equal(reward.preprocess(images), earlier), side  # the same interpolate call, crop, arithmetic
    # and so the same score (one size: a forward pass of the ViT-L tower takes seconds on a CPU)
    text = reward.tokenizer(PROMPTS[:1], padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.inference_mode():
        score_of_earlier = reward.model.score_gard(text.input_ids, text.attention_mask, earlier).reshape(-1)
    assert torch.equal(reward(images, PROMPTS[:1]), score_of_earlier)


@pytest.mark.parametrize("side", SQUARE_SIZES)
def test_clipscore_preprocessing_is_the_earlier_one(rewards: dict[str, object], side: int) -> None:
    reward = rewards["clipscore"]
    images = random_images(2, side, side, seed=side)
    pixels = reward.encoder.preprocess(images)
    earlier = earlier_preprocess(images, 32, "bicubic", reward.encoder.mean, reward.encoder.std)
    assert torch.equal(pixels, earlier)
    with torch.inference_mode():
        image_emb = torch.nn.functional.normalize(reward.encoder.model.encode_image(earlier), dim=-1)
        cosine = (image_emb * reward.encoder.encode_texts(PROMPTS[:2])).sum(-1)
    assert torch.equal(reward(images, PROMPTS[:2]), 2.5 * cosine.clamp(min=0))


@pytest.mark.parametrize("side", SQUARE_SIZES)
def test_aesthetic_preprocessing_is_the_earlier_one(rewards: dict[str, object], side: int) -> None:
    reward = rewards["aesthetic"]
    images = random_images(2, side, side, seed=side)
    earlier = earlier_preprocess(images, 32, "bicubic", reward.encoder.mean, reward.encoder.std)
    assert torch.equal(reward.encoder.preprocess(images), earlier)
    with torch.inference_mode():
        embeddings = torch.nn.functional.normalize(reward.encoder.model.encode_image(earlier), dim=-1)
        score_of_earlier = reward.mlp(embeddings).reshape(-1)
    assert torch.equal(reward(images), score_of_earlier)


@pytest.mark.parametrize("height, width", [(48, 64), (97, 131), (256, 192)])
def test_non_square_images_are_cropped_as_the_references_crop_them(
    rewards: dict[str, object], files: dict[str, Path], height: int, width: int
) -> None:
    """On a non-square image torchvision's ``Resize`` truncates the longer side and ``CenterCrop`` rounds the
    margin, as ImageReward's and open_clip's own PIL transforms do; the earlier code rounded the side and floored
    the margin, a shift of up to a pixel (measured: up to 3.2 off the references in normalised units, mean 0.47,
    where the torchvision transforms stay within 0.35, mean 0.006: 8-bit rounding and PIL's filter)."""
    import open_clip

    images = random_images(2, height, width, seed=height)
    _, _, open_clip_preprocess = open_clip.create_model_and_transforms(f"local-dir:{files['open_clip']}")
    imagereward = rewards["imagereward"]
    for preprocess, reference, size in (
        (imagereward.preprocess, imagereward.model.preprocess, 224),  # ImageReward's _transform(224)
        (rewards["clipscore"].encoder.preprocess, open_clip_preprocess, 32),
    ):
        pixels = preprocess(images)
        expected = torch.stack([reference(to_pil(image)) for image in images])
        assert pixels.shape == expected.shape == (2, 3, size, size)
        assert float((pixels - expected).abs().mean()) < 0.01 and float((pixels - expected).abs().max()) < 0.4
        earlier = earlier_preprocess(images, size, "bicubic", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        assert float((earlier - expected).abs().mean()) > 0.05  # the earlier code's shifted crop


@pytest.mark.parametrize(
    "preprocess_cfg",
    [
        {"resize_mode": "longest", "fill_color": 128},
        {"resize_mode": "squash", "interpolation": "bilinear"},
        {"resize_mode": "shortest", "interpolation": "bilinear"},
    ],
)
def test_open_clip_resize_modes_follow_open_clip(tmp_path: Path, open_clip_dir: Path, preprocess_cfg: dict) -> None:
    """open_clip's other eval transforms (``longest`` pads with the fill colour; ``squash``; bilinear), on
    non-square images, against open_clip's own PIL pipeline."""
    import shutil

    import open_clip

    folder = tmp_path / "variant"
    shutil.copytree(open_clip_dir, folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["preprocess_cfg"].update(preprocess_cfg)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    encoder = CLIPScore(f"local-dir:{folder}", None).encoder
    _, _, reference = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    for height, width in ((48, 64), (97, 40), (32, 32)):
        images = random_images(2, height, width, seed=width)
        expected = torch.stack([reference(to_pil(image)) for image in images])
        pixels = encoder.preprocess(images)
        assert pixels.shape == expected.shape == (2, 3, 32, 32)
        assert float((pixels - expected).abs().mean()) < 0.01 and float((pixels - expected).abs().max()) < 0.1


# --- through the registry --------------------------------------------------------------------------------


def test_registered_names_and_weighted_sum(rewards: dict[str, object]) -> None:
    for name in ("imagereward", "aesthetic", "clipscore"):
        spec = reward_spec(name)
        assert spec.description
    assert reward_spec("imagereward").uses_prompt and not reward_spec("aesthetic").uses_prompt
    images = random_images(1, 64, 64, seed=7)
    parts = {name: rewards[name](images, PROMPTS[:1]) for name in ("imagereward", "aesthetic", "clipscore")}
    total = rewards["sum"](images, PROMPTS[:1])
    check_scores(total, 1)
    expected = parts["imagereward"] + 0.1 * parts["aesthetic"] - 2 * parts["clipscore"]
    torch.testing.assert_close(total, expected)


def test_async_scoring_with_a_real_reward(rewards: dict[str, object]) -> None:
    reward = rewards["clipscore"]
    images = random_images(2, 32, 32, seed=8)
    with AsyncRewardScorer(reward) as scorer:
        future = scorer.submit(images, PROMPTS[:2])
        images.zero_()  # the caller may reuse its buffer at once (the scorer cloned it)
        result = future.result(timeout=60)
    torch.testing.assert_close(result, reward(random_images(2, 32, 32, seed=8), PROMPTS[:2]))


def test_lazy_import_and_image_reward_import_hygiene() -> None:
    """In a fresh process: importing the rewards loads no model package; importing ImageReward through the
    compat layer leaves no blanket ``warnings`` ignore (BLIP adds one) and keeps transformers' log level."""
    code = (
        "import sys, warnings; import diffusion_gym.rewards;"
        "heavy = [m for m in ('ImageReward', 'open_clip') if m in sys.modules]; assert not heavy, heavy;"
        "from transformers.utils import logging; level = logging.get_verbosity();"
        "from diffusion_gym.rewards._transformers_compat import import_image_reward; import_image_reward();"
        "blanket = [f for f in warnings.filters if f[0] == 'ignore' and f[1] is None and f[3] is None];"
        "assert not [f for f in blanket if f[2] is Warning], blanket;"
        "assert logging.get_verbosity() == level, 'transformers verbosity changed'"
    )
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo, env={**os.environ, "HF_HUB_OFFLINE": "1"})


# --- asynchronous scoring (no model) ---------------------------------------------------------------------


class SlowReward:
    """Sleeps, then returns the mean pixel of each image; records the order it was called in."""

    def __init__(self, delay: float):
        self.delay = delay
        self.calls: list[float] = []

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        time.sleep(self.delay)
        self.calls.append(float(images.mean()))
        return images.mean(dim=(1, 2, 3))


def test_async_overlaps_and_keeps_order() -> None:
    reward = SlowReward(delay=0.4)
    batches = [torch.full((2, 3, 4, 4), value) for value in (0.1, 0.2, 0.3)]
    with AsyncRewardScorer(reward) as scorer:
        start = time.perf_counter()
        futures = [scorer.submit(batch, ["a", "b"]) for batch in batches]
        submitted = time.perf_counter() - start
        time.sleep(0.4)  # "sampling the next batch" while the first one is scored
        results = [future.result(timeout=10) for future in futures]
        elapsed = time.perf_counter() - start
    assert submitted < 0.2  # submit does not wait for scoring
    assert elapsed < 3 * 0.4 + 0.3  # the main thread's work overlapped the scoring
    assert reward.calls == pytest.approx([0.1, 0.2, 0.3])  # one worker: submission order
    for batch, result in zip(batches, results, strict=True):
        torch.testing.assert_close(result, batch.mean(dim=(1, 2, 3)))
        assert result.dtype == torch.float32


def test_async_errors_surface_on_result_with_the_original_exception() -> None:
    error = ValueError("reward model exploded")
    calls = []

    def flaky(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        calls.append(len(prompts))
        if len(calls) == 1:
            raise error
        return torch.ones(len(prompts))

    with AsyncRewardScorer(flaky) as scorer:
        failed = scorer.submit(torch.zeros(2, 3, 4, 4), ["a", "b"])
        with pytest.raises(ValueError, match="exploded") as raised:
            failed.result(timeout=10)
        assert raised.value is error
        assert "flaky" in "".join(traceback.format_tb(raised.value.__traceback__))
        # The worker survives an error and goes on scoring.
        torch.testing.assert_close(scorer.score(torch.zeros(2, 3, 4, 4), ["a", "b"]), torch.ones(2))


def test_async_checks_the_reward_output_and_closing() -> None:
    scorer = AsyncRewardScorer(lambda images, prompts: torch.zeros(len(prompts) + 1))
    with pytest.raises(ValueError, match="shape"):
        scorer.score(torch.zeros(2, 3, 4, 4), ["a", "b"])
    scorer.close()
    scorer.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        scorer.submit(torch.zeros(1, 3, 4, 4), ["a"])


def test_async_worker_thread_ends_on_close() -> None:
    before = {thread.ident for thread in threading.enumerate()}
    scorer = AsyncRewardScorer(lambda images, prompts: torch.zeros(len(prompts)))
    scorer.score(torch.zeros(1, 3, 4, 4), ["x"])
    scorer.close()
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("reward-scorer")]
    assert not leftover


# --- the transformers-5 compatibility layer --------------------------------------------------------------


def test_compat_layer_only_adds_what_is_missing() -> None:
    import transformers.modeling_utils as modeling_utils
    from transformers import pytorch_utils
    from transformers.modeling_utils import PreTrainedModel

    from diffusion_gym.rewards import _transformers_compat as compat

    init_weights, post_init = PreTrainedModel.init_weights, PreTrainedModel.post_init
    compat.import_image_reward()
    patched = compat.apply()
    assert compat.apply() == patched  # idempotent
    from ImageReward.models.BLIP import med

    # What transformers still has elsewhere is reused, not reimplemented; nothing existing is replaced.
    for name in ("apply_chunking_to_forward", "prune_linear_layer"):
        if hasattr(pytorch_utils, name):
            assert getattr(modeling_utils, name) is getattr(pytorch_utils, name)
        assert getattr(med, name) is getattr(modeling_utils, name)
    assert PreTrainedModel.init_weights is init_weights and PreTrainedModel.post_init is post_init


def test_compat_helpers_behave_like_transformers_4() -> None:
    from diffusion_gym.rewards import _transformers_compat as compat

    heads, index = compat.find_pruneable_heads_and_indices([1, 3], n_heads=4, head_size=2, already_pruned_heads={3})
    assert heads == {1} and index.tolist() == [0, 1, 4, 5, 6, 7]
    layer = torch.nn.Linear(4, 6)
    pruned = compat._prune_linear_layer(layer, torch.tensor([0, 2]))
    torch.testing.assert_close(pruned.weight, layer.weight[[0, 2]].detach())
    chunked = compat._apply_chunking_to_forward(lambda x: x * 2, 2, 1, torch.arange(8.0).view(1, 8, 1))
    torch.testing.assert_close(chunked, torch.arange(8.0).view(1, 8, 1) * 2)

    module = torch.nn.Linear(2, 2)
    mask = compat._invert_attention_mask(module, torch.tensor([[1, 1, 0]]))
    assert mask.shape == (1, 1, 1, 3) and mask[0, 0, 0, :2].eq(0).all() and mask[0, 0, 0, 2] < -1e30
    assert compat._get_head_mask(module, None, 3) == [None, None, None]
    assert compat._get_head_mask(module, torch.ones(4), 3).shape == (3, 1, 4, 1, 1)
