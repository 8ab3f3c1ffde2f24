"""Tests for rankrl.tasks: embedded tasks, the shared real data sets, and malformed-file errors."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest

from rankrl import tasks
from rankrl.tasks import Example, Task, TaskFormatError, load_task

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data sets not found at {SHARED}")


# --- embedded default task ------------------------------------------------------------------------------


def test_default_sizes_balanced_and_named():
    task = load_task("default")
    assert (task.name, task.kind, task.label_names, task.num_labels) == (
        "default", "classification", ("negative", "positive"), 2,
    )  # fmt: skip
    assert {s: len(r) for s, r in task.splits.items()} == {"train": 3000, "eval": 600, "test": 600}
    for rows in task.splits.values():
        counts = Counter(ex.label for ex in rows)
        assert counts[0] == counts[1] == len(rows) // 2


def test_default_is_deterministic_seed_independent_and_fast():
    first = load_task("default", seed=0)
    tasks._default_splits.cache_clear()  # regenerate for real, not from the cache
    start = time.perf_counter()
    second = load_task("default", seed=123)
    assert time.perf_counter() - start < 0.5
    assert first.splits == second.splits


def test_default_has_no_duplicates_within_or_across_splits():
    texts = [ex.text for rows in load_task("default").splits.values() for ex in rows]
    assert len(texts) == len(set(texts)) == 4200


def _oracle(text: str) -> int:
    """Independent re-derivation of the label from the grammar's rules (negation, main clause)."""
    text = re.sub(r" [.!]$", "", text)
    if " , but " in text:
        clause = text.split(" , but ")[1]
    elif text.startswith("although "):
        clause = text.split(" , ", 1)[1]
    elif " , even though " in text:
        clause = text.split(" , even though ")[0]
    else:
        clause = text.rsplit(" , ", 1)[-1]  # drop a prefix such as "honestly ,"
    positive_words = set(tasks._POS_ADJ) | {w for pair in tasks._POS_VERB for w in pair}
    positive = bool(set(clause.split()) & positive_words)
    negated = bool(re.search(r"\b(not|never|hardly|far from|n't)\b|n't", clause))
    return int(positive) ^ int(negated)


def test_default_labels_follow_negation_and_contrast_rules():
    rows = [ex for split in load_task("default").splits.values() for ex in split]
    assert all(_oracle(ex.text) == ex.label for ex in rows)
    single = [ex for ex in rows if " not " in ex.text and not re.search(r" but |though", ex.text)]
    flipped_pos = [ex for ex in single if set(ex.text.split()) & {"boring", "dull", "awful", "bad"}]
    flipped_neg = [ex for ex in single if set(ex.text.split()) & {"wonderful", "brilliant", "superb", "good"}]
    assert len(flipped_pos) > 10 and all(ex.label == 1 for ex in flipped_pos)
    assert len(flipped_neg) > 10 and all(ex.label == 0 for ex in flipped_neg)
    contrast = [ex for ex in rows if " , but " in ex.text]
    assert len(contrast) > 500


def test_default_is_not_solvable_by_any_single_word():
    # Best rule of the form "label = f(word present)" on train: a learner must compose, not spot words.
    train = load_task("default").splits["train"]
    present: dict[str, Counter] = {}
    for ex in train:
        for word in set(ex.text.split()):
            present.setdefault(word, Counter())[ex.label] += 1
    totals = Counter(ex.label for ex in train)
    best = max(
        (max(c[0], c[1]) + max(totals[0] - c[0], totals[1] - c[1])) / len(train) for c in present.values()
    )
    assert best < 0.75


# --- embedded arith task --------------------------------------------------------------------------------


def test_arith_targets_are_correct_and_splits_disjoint():
    task = load_task("arith")
    assert task.kind == "causal_lm" and task.num_labels == 0
    assert {s: len(r) for s, r in task.splits.items()} == {"train": 4000, "eval": 500, "test": 500}
    for rows in task.splits.values():
        for ex in rows:
            a, op, b = re.fullmatch(r"(\d{1,2})([+-])(\d{1,2})=", ex.text).groups()
            assert ex.target == str(int(a) + int(b) if op == "+" else int(a) - int(b))
    prompts = [ex.text for rows in task.splits.values() for ex in rows]
    assert len(prompts) == len(set(prompts))


def test_max_train_and_max_eval_subsample_with_seed():
    a = load_task("default", max_train=100, max_eval=50, seed=1)
    b = load_task("default", max_train=100, max_eval=50, seed=1)
    c = load_task("default", max_train=100, max_eval=50, seed=2)
    assert (len(a.splits["train"]), len(a.splits["eval"]), len(a.splits["test"])) == (100, 50, 600)
    assert a.splits == b.splits and a.splits["train"] != c.splits["train"]


# --- the shared real data sets ---------------------------------------------------------------------------


@needs_shared
def test_sst2_directory():
    task = load_task(SHARED / "sst2")
    assert task.label_names == ("negative", "positive")
    assert {s: len(r) for s, r in task.splits.items()} == {"train": 6920, "eval": 872, "test": 1821}
    assert Counter(ex.label for ex in task.splits["train"]) == {0: 3310, 1: 3610}


@needs_shared
@pytest.mark.parametrize("labels, num", [("coarse", 6), ("fine", 50)])
def test_trec_coarse_and_fine(labels, num):
    task = load_task(SHARED / "trec_qc", labels=labels, seed=0)
    assert task.num_labels == num
    assert len(task.splits["train"]) + len(task.splits["eval"]) == 5452  # no dev file: eval is carved
    assert len(task.splits["test"]) == 500
    if labels == "coarse":
        assert task.label_names == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
        assert Counter(task.label_names[ex.label] for ex in task.splits["test"])["DESC"] == 138
    else:
        assert "NUM:dist" in task.label_names


@needs_shared
def test_gsm8k_directory_has_numeric_targets():
    task = load_task(SHARED / "gsm8k")
    assert task.kind == "causal_lm"
    assert len(task.splits["train"]) + len(task.splits["eval"]) == 7473
    assert len(task.splits["test"]) == 1319
    assert all(re.fullmatch(r"-?[\d.]+", ex.target) for rows in task.splits.values() for ex in rows)
    assert task.splits["test"][0].text.startswith("Janet")


# --- local formats and their errors ---------------------------------------------------------------------


def test_tsv_directory_with_string_labels(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\tcat\nb\tdog\nc\tcat\nd\tdog\n")
    (tmp_path / "dev.tsv").write_text('sentence\tlabel\n"quoted\tdog\n')
    (tmp_path / "README.md").write_text("ignored\n")
    task = load_task(tmp_path)
    assert task.label_names == ("cat", "dog")
    assert [ex.label for ex in task.splits["train"]] == [0, 1, 0, 1]
    assert task.splits["eval"] == (Example('"quoted', label=1),)


def test_single_file_gets_stratified_eval(tmp_path):
    rows = "".join(f'{{"text": "t{i}", "label": {i % 2}}}\n' for i in range(40))
    (tmp_path / "data.jsonl").write_text(rows)
    task = load_task(tmp_path / "data.jsonl", eval_fraction=0.25, seed=3)
    assert Counter(ex.label for ex in task.splits["eval"]) == {0: 5, 1: 5}
    assert len(task.splits["train"]) == 30 and "test" not in task.splits


def test_malformed_sst_line_names_file_and_line(tmp_path):
    path = tmp_path / "stsa.binary.train"
    path.write_text("1 good film\n0 bad film\n\nabc def\n")
    with pytest.raises(TaskFormatError, match=r"stsa\.binary\.train:4: expected \"<label> <text>\".*'abc de"):
        load_task(path)


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": "2+2=", \n')
    with pytest.raises(TaskFormatError, match=r"train\.jsonl:2: expected one JSON object"):
        load_task(path)
    path.write_text('{"question": "q", "answer": "#### 3"}\n{"question": "q2"}\n')
    with pytest.raises(TaskFormatError, match=r"train\.jsonl:2: expected a row .*got keys \['question'\]"):
        load_task(path)


def test_malformed_tsv_names_file_and_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tscore\nnice\t1\n")
    with pytest.raises(TaskFormatError, match=r"train\.tsv:1: expected a header with .*'label'"):
        load_task(path)
    path.write_text("text\tlabel\nnice\t1\nbad\t0\nno label here\n")
    with pytest.raises(TaskFormatError, match=r"train\.tsv:4: expected 2 fields"):
        load_task(path)


def test_trec_test_label_missing_from_train_is_an_error(tmp_path):
    (tmp_path / "TREC.train").write_text("NUM:dist How far ?\nHUM:ind Who ?\nHUM:ind Who else ?\n")
    (tmp_path / "TREC.test").write_text("LOC:city Where ?\n")
    with pytest.raises(TaskFormatError, match=r"TREC\.test:1: label 'LOC' does not occur in the train split"):
        load_task(tmp_path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(TaskFormatError, match=r"empty\.tsv: file is empty"):
        load_task(tmp_path / "empty.tsv")
    (tmp_path / "blank.train").write_text("\n  \n")
    with pytest.raises(TaskFormatError, match=r"blank\.train: file is empty"):
        load_task(tmp_path / "blank.train")
    with pytest.raises(TaskFormatError, match="no such file or directory"):
        load_task(str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_name_while_offline_is_refused_before_any_download(monkeypatch, var):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    with pytest.raises(TaskFormatError, match=rf"'someone/sentiment' is not a local file .*\({var}=1\)"):
        load_task("someone/sentiment")


def test_argument_and_task_validation():
    with pytest.raises(ValueError, match="labels must be"):
        load_task("default", labels="medium")
    with pytest.raises(ValueError, match="eval_fraction"):
        load_task("default", eval_fraction=1.0)
    rows = (Example("x", label=0),)
    with pytest.raises(ValueError, match="kind"):
        Task("t", "regression", {"train": rows, "eval": rows}, ("a", "b"))
    with pytest.raises(ValueError, match="'eval'"):
        Task("t", "classification", {"train": rows}, ("a", "b"))
    with pytest.raises(ValueError, match=r"label must be an int in \[0, 2\)"):
        Task("t", "classification", {"train": rows, "eval": (Example("y", label=2),)}, ("a", "b"))
    with pytest.raises(ValueError, match="str target"):
        Task("t", "causal_lm", {"train": (Example("1+1="),), "eval": (Example("2+2=", target="4"),)})


def test_hub_dataset_columns_and_class_label_names(monkeypatch):
    # A fake load_dataset exercises the hub path without any download; GLUE hides test labels as -1.
    datasets = pytest.importorskip("datasets")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})  # fmt: skip

    def split(texts, labels):
        return datasets.Dataset.from_dict({"sentence": texts, "label": labels}, features=features)

    train, validation = split(["good", "bad", "fine"], [1, 0, 1]), split(["meh"], [0])
    fake = datasets.DatasetDict(train=train, validation=validation, test=split(["?"], [-1]))
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: calls.append(args) or fake)
    task = load_task("nyu-mll/glue:sst2")
    assert calls == [("nyu-mll/glue", "sst2")]
    assert task.label_names == ("negative", "positive") and set(task.splits) == {"train", "eval"}
    assert task.splits["train"] == (Example("good", 1), Example("bad", 0), Example("fine", 1))
