"""The Shapes world's report for ``diffusion-gym evaluate``: which facts of the object sentences each model gets
right (colour drawn, shape, size, cell) and which shape it draws for each named shape."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffusion_gym.reports import WorldReport
from diffusion_gym.shapes.gold import object_attribute_accuracy, shape_confusion


def shapes_report(base_images: torch.Tensor, tuned_images: torch.Tensor, prompts: Sequence[str]) -> WorldReport:
    """Object facts and shape confusion of the base and the fine-tuned images ``(N, 3, H, W)`` of ``prompts``."""
    prompts = list(prompts)
    facts = {
        "base": object_attribute_accuracy(base_images, prompts),
        "fine_tuned": object_attribute_accuracy(tuned_images, prompts),
    }
    lines = ["", "| object sentences: fraction right | base | fine-tuned |", "|---|---:|---:|"]
    lines += [f"| {fact} | {facts['base'][fact]:.3f} | {facts['fine_tuned'][fact]:.3f} |" for fact in facts["base"]]
    confusion = {"base": shape_confusion(base_images, prompts), "fine_tuned": shape_confusion(tuned_images, prompts)}
    drawn_shapes = list(confusion["base"])
    lines += ["", "| shape named -> drawn (base / fine-tuned) | " + " | ".join(drawn_shapes) + " |"]
    lines += ["|---|" + "---:|" * len(drawn_shapes)]
    for named, row in confusion["base"].items():
        cells = [f"{row[drawn]} / {confusion['fine_tuned'][named][drawn]}" for drawn in drawn_shapes]
        lines.append(f"| {named} | " + " | ".join(cells) + " |")
    return WorldReport({"object_facts": facts, "shape_confusion": confusion}, lines)


__all__ = ["shapes_report"]
