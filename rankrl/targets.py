"""Which linear projections of a transformer get adapted (LoRA) or factorized (compress), and what kind each is.

Model-agnostic names matter for transfer: a rank policy learned on BERT-style ``query``/``intermediate.dense``
must recognise Llama-style ``q_proj``/``up_proj`` as the same kinds of projection. Every adapted module is
described by a :class:`TargetModule` row (name, layer index, canonical kind, shape).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

#: canonical projection kinds, in a fixed order (feature one-hot columns follow it)
KINDS: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down", "other")

# Suffix of a module name (relative to its transformer block) -> canonical kind. Longest suffix wins, so
# BERT's ``attention.output.dense`` (o) is not mistaken for ``output.dense`` (down).
_KIND_SUFFIXES: dict[str, str] = {
    # Llama / Qwen2 / Mistral
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    # BERT / RoBERTa / MiniLM
    "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
    "attention.output.dense": "o", "intermediate.dense": "up", "output.dense": "down",
    # GPT-2 style
    "attn.c_attn": "q", "attn.c_proj": "o", "mlp.c_fc": "up", "mlp.c_proj": "down",
}  # fmt: skip

# Heads and poolers are trained in full (``modules_to_save``) or left alone, never LoRA-adapted.
_EXCLUDE = re.compile(
    r"(^|\.)(lm_head|score|classifier|pooler|cls|embed_tokens|embeddings|lora_[AB]|lora_dropout"
    r"|modules_to_save|original_module)(\.|$)"
)
_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class TargetModule:
    """One LoRA-adaptable linear projection.

    Attributes:
        name: full module name in the base model (``model.named_modules()``).
        layer_index: index of the transformer block the module lives in.
        num_layers: number of transformer blocks in the model.
        kind: canonical projection kind, one of :data:`KINDS`.
        in_features: input width of the projection.
        out_features: output width of the projection.
    """

    name: str
    layer_index: int
    num_layers: int
    kind: str
    in_features: int
    out_features: int

    @property
    def depth(self) -> float:
        """Relative depth in [0, 1] (0 = first block, 1 = last)."""
        return self.layer_index / max(self.num_layers - 1, 1)

    @property
    def max_rank(self) -> int:
        """The largest rank a LoRA on this projection can hold."""
        return min(self.in_features, self.out_features)


def projection_kind(name: str) -> str:
    """Canonical kind of a module from its name.

    >>> projection_kind("bert.encoder.layer.3.attention.output.dense")
    'o'
    >>> projection_kind("model.layers.0.mlp.down_proj")
    'down'
    """
    best, best_len = "other", -1
    for suffix, kind in _KIND_SUFFIXES.items():
        if (name == suffix or name.endswith("." + suffix)) and len(suffix) > best_len:
            best, best_len = kind, len(suffix)
    return best


def find_target_modules(model: nn.Module, kinds: tuple[str, ...] | None = None) -> list[TargetModule]:
    """Auto-detect the linear projections inside the transformer blocks of ``model``.

    Args:
        model: a Hugging Face model (BERT-, Llama-, Qwen2-style; GPT-2 Conv1D is recognised too).
        kinds: keep only these canonical kinds (default: every attention and MLP projection).

    Returns:
        Rows sorted by (layer, name).

    Raises:
        ValueError: when no projection is found, or ``kinds`` names an unknown kind.
    """
    if kinds is not None and (bad := sorted(set(kinds) - set(KINDS))):
        raise ValueError(f"unknown projection kinds {bad}; choose from {list(KINDS)}")
    found: list[tuple[str, int, int, int]] = []
    for name, module in model.named_modules():
        shape = _linear_shape(module)
        if shape is None or _EXCLUDE.search(name):
            continue
        name = name.removesuffix(".base_layer")  # already wrapped by PEFT: report the wrapper's name
        m = _LAYER_INDEX.search("." + name + ".")
        if m is None:
            continue
        found.append((name, int(m.group(1)), *shape))
    if not found:
        raise ValueError(
            f"no linear projections inside transformer blocks found in {type(model).__name__}; "
            "pass explicit target module names"
        )
    num_layers = max(layer for _, layer, _, _ in found) + 1
    rows = [
        TargetModule(name, layer, num_layers, projection_kind(name), fin, fout)
        for name, layer, fin, fout in found
    ]
    if kinds is not None:
        rows = [r for r in rows if r.kind in kinds]
    return sorted(rows, key=lambda r: (r.layer_index, r.name))


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2: weight is (in, out)
        return int(module.weight.shape[0]), int(module.nf)
    return None
