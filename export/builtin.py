"""Built-in architectures with random weights, from ``transformers`` configs (no hub downloads).

``size="full"`` is the real architecture at its default config (ResNet-50, BERT-base, DistilBERT-base,
ViT-base/16); ``size="small"`` keeps the same code paths at a size CI can export in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tensorwire.export.errors import ExportError, require


@dataclass
class BuiltinModel:
    name: str
    module: Any                                     # torch.nn.Module, eval mode
    example_inputs: Any                             # tensor or dict of named tensors
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    size: str = "small"
    description: str = ""


def _select(module, keys: list[str]):
    """Hugging Face models return a ModelOutput; serve the chosen fields as a plain tuple."""
    import torch

    class SelectOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, **kwargs):
            out = self.model(**kwargs)
            return tuple(out[k] for k in keys)

    return SelectOutputs().eval()


def _seed(seed: int) -> None:
    require("torch").manual_seed(seed)


def mlp(size: str = "small", width: int = 512, depth: int = 3, out_features: int = 10, batch: int = 2,
        seed: int = 0) -> BuiltinModel:
    torch = require("torch")
    _seed(seed)
    layers: list[Any] = []
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(width, out_features))
    module = torch.nn.Sequential(*layers).eval()
    return BuiltinModel("mlp", module, torch.randn(batch, width), ["input"], ["output"],
                        {"input": {0: "batch"}, "output": {0: "batch"}}, size,
                        f"{depth}-layer MLP, {width} wide")


def _ids(torch, vocab: int, batch: int, seq: int) -> dict[str, Any]:
    ids = torch.randint(0, vocab, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    if batch > 1:
        mask[1, seq - max(1, seq // 4):] = 0  # one padded row, as real batches have
    return {"input_ids": ids, "attention_mask": mask}


def bert(size: str = "small", batch: int = 2, seq: int | None = None, seed: int = 0) -> BuiltinModel:
    torch = require("torch")
    tf = require("transformers")
    _seed(seed)
    if size == "full":
        cfg, seq = tf.BertConfig(), seq or 128
    else:
        cfg = tf.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=128)
        seq = seq or 16
    inputs = _ids(torch, cfg.vocab_size, batch, seq)
    inputs["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.int64)
    inputs["token_type_ids"][:, seq // 2:] = 1
    outs = ["last_hidden_state", "pooler_output"]
    module = _select(tf.BertModel(cfg).eval(), outs)
    axes = {n: {0: "batch", 1: "sequence"} for n in inputs} | {
        "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}}
    return BuiltinModel("bert", module, inputs, list(inputs), outs, axes, size,
                        f"BertModel {cfg.num_hidden_layers}x{cfg.hidden_size}")


def distilbert(size: str = "small", batch: int = 2, seq: int | None = None, seed: int = 0) -> BuiltinModel:
    torch = require("torch")
    tf = require("transformers")
    _seed(seed)
    if size == "full":
        cfg, seq = tf.DistilBertConfig(), seq or 128
    else:
        cfg = tf.DistilBertConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                  max_position_embeddings=128)
        seq = seq or 16
    inputs = _ids(torch, cfg.vocab_size, batch, seq)
    outs = ["last_hidden_state"]
    module = _select(tf.DistilBertModel(cfg).eval(), outs)
    axes = {n: {0: "batch", 1: "sequence"} for n in inputs} | {"last_hidden_state": {0: "batch", 1: "sequence"}}
    return BuiltinModel("distilbert", module, inputs, list(inputs), outs, axes, size,
                        f"DistilBertModel {cfg.n_layers}x{cfg.dim}")


def resnet50(size: str = "small", batch: int = 2, image: int | None = None, seed: int = 0) -> BuiltinModel:
    torch = require("torch")
    tf = require("transformers")
    _seed(seed)
    if size == "full":
        cfg, image = tf.ResNetConfig(num_labels=1000), image or 224   # defaults: ResNet-50
    else:
        cfg = tf.ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                              layer_type="bottleneck", num_labels=10)
        image = image or 64
    module = _select(tf.ResNetForImageClassification(cfg).eval(), ["logits"])
    inputs = {"pixel_values": torch.randn(batch, 3, image, image)}
    axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}
    return BuiltinModel("resnet50", module, inputs, ["pixel_values"], ["logits"], axes, size,
                        f"ResNet depths {cfg.depths}, widths {cfg.hidden_sizes}")


def vit(size: str = "small", batch: int = 2, seed: int = 0) -> BuiltinModel:
    torch = require("torch")
    tf = require("transformers")
    _seed(seed)
    if size == "full":
        cfg = tf.ViTConfig(num_labels=1000)   # defaults: ViT-base, patch 16, 224x224
    else:
        cfg = tf.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                           image_size=32, patch_size=8, num_labels=10)
    module = _select(tf.ViTForImageClassification(cfg).eval(), ["logits"])
    inputs = {"pixel_values": torch.randn(batch, 3, cfg.image_size, cfg.image_size)}
    # ViT's position embeddings fix the image size; only the batch varies.
    axes = {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}
    return BuiltinModel("vit", module, inputs, ["pixel_values"], ["logits"], axes, size,
                        f"ViT {cfg.num_hidden_layers}x{cfg.hidden_size}, {cfg.image_size}px/{cfg.patch_size}")


# The one table of built-in architectures: the export and bench CLIs take their choices from it.
REGISTRY: dict[str, Callable[..., BuiltinModel]] = {"mlp": mlp, "resnet50": resnet50, "bert": bert,
                                                   "distilbert": distilbert, "vit": vit}
BUILTIN_NAMES: tuple[str, ...] = tuple(REGISTRY)


def build_builtin(name: str, **overrides: Any) -> BuiltinModel:
    """``name`` in :data:`BUILTIN_NAMES`; ``size="small"|"full"`` and per-model overrides."""
    if name not in REGISTRY:
        raise ExportError(f"unknown built-in {name!r}; choose one of {sorted(REGISTRY)}")
    size = overrides.get("size", "small")
    if size not in ("small", "full"):
        raise ExportError(f"size must be 'small' or 'full', got {size!r}")
    try:
        return REGISTRY[name](**overrides)
    except TypeError as exc:
        raise ExportError(f"bad option for built-in {name!r}: {exc}") from exc
