"""Model loading: aliases, tiny models from a config, clear errors offline."""

from __future__ import annotations

import pytest

from rankrl.models import ModelLoadError, load_model, tiny_tokenizer
from rankrl.targets import find_target_modules, projection_kind


@pytest.mark.parametrize("name,kind,n_modules", [("tiny-bert", "classification", 12), ("tiny-llama", "causal_lm", 14),
                                                 ("tiny-qwen", "classification", 14)])  # fmt: skip
def test_tiny_models_build_offline_with_heads_and_targets(name, kind, n_modules):
    loaded = load_model(name, task_kind=kind, num_labels=3)
    targets = find_target_modules(loaded.model)
    assert len(targets) == n_modules and {t.num_layers for t in targets} == {2}
    assert loaded.tokenizer.pad_token is not None
    if kind == "classification":
        assert loaded.model.config.num_labels == 3
    assert loaded.tokenizer.decode(loaded.tokenizer("12+7=19")["input_ids"]) == "12+7=19"


def test_tiny_tokenizer_has_a_chat_template():
    text = tiny_tokenizer().apply_chat_template([{"role": "user", "content": "2+2="}], tokenize=False,
                                                add_generation_prompt=True)  # fmt: skip
    assert text.endswith("<|im_start|>assistant\n") and "2+2=" in text


def test_projection_kinds_agree_across_architectures():
    assert projection_kind("bert.encoder.layer.3.attention.output.dense") == "o"
    assert projection_kind("bert.encoder.layer.3.output.dense") == "down"
    assert projection_kind("model.layers.0.mlp.up_proj") == projection_kind("bert.encoder.layer.0.intermediate.dense")


def test_bad_names_say_what_to_do(monkeypatch):
    with pytest.raises(ModelLoadError, match="unknown model 'minilmm'"):
        load_model("minilmm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub is offline.*download it first"):
        load_model("someone/some-model")
    with pytest.raises(ModelLoadError, match="encoder"):
        load_model("minilm", task_kind="causal_lm")
    with pytest.raises(ValueError, match="task_kind"):
        load_model("tiny-bert", task_kind="regression")


@pytest.mark.slow
def test_packaged_minilm_loads_offline():
    loaded = load_model("minilm", num_labels=2)
    targets = find_target_modules(loaded.model)
    assert len(targets) == 36 and sum(p.numel() for p in loaded.model.parameters()) > 22_000_000
    assert sorted({t.kind for t in targets}) == ["down", "k", "o", "q", "up", "v"]


@pytest.mark.slow
def test_packaged_smollm2_converts_once_then_loads_from_cache():
    import time

    from rankrl.models import cache_dir

    loaded = load_model("smollm2", task_kind="causal_lm")
    assert (cache_dir() / "smollm2-135m-instruct" / "model.safetensors").exists()
    targets = find_target_modules(loaded.model)
    assert len(targets) == 30 * 7 and targets[0].num_layers == 30
    start = time.perf_counter()
    again = load_model("smollm2", task_kind="causal_lm")
    assert time.perf_counter() - start < 10  # from the safetensors cache, not the GGUF (~16 s)
    ids = again.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)  # fmt: skip
    out = again.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
