"""Tiny collections and configs shared by the rerank tests (no download: tiny-qwen is built from a config)."""

from __future__ import annotations

from pathlib import Path

from rankrl.rerank.collections import Collection

TOPICS = ["wing lift", "engine noise", "heat transfer", "shock wave", "boundary layer", "flutter model"]
#: the line erank prompts show with --first_stage_rank
RANK_LINE = "First-stage (BM25) rank: "


def tiny_collection() -> Collection:
    """Six topics x five docs: per topic two relevant "<topic> study j" (gains 2, 1) and three judged non-relevant."""
    docs, qrels = {}, {}
    for qi, topic in enumerate(TOPICS):
        for j in range(5):
            d = f"d{qi}{j}"
            docs[d] = f"{topic} study {j}" if j < 2 else f"{topic.split()[0]} other paper {j}"
            qrels.setdefault(str(qi), {})[d] = 2 - j if j < 2 else 0
    return Collection(docs=docs, queries={str(i): t for i, t in enumerate(TOPICS)}, qrels=qrels, name="tiny")


def write_trec(coll: Collection, root):
    """``coll`` written under ``root`` in the TREC layout (docs.tsv, topics.tsv, qrels.txt); returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs.tsv").write_text("".join(f"{d}\t{t}\n" for d, t in coll.docs.items()))
    (root / "topics.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in coll.queries.items()))
    (root / "qrels.txt").write_text("".join(f"{q} 0 {d} {g}\n" for q, j in coll.qrels.items() for d, g in j.items()))
    return root


def grpo_config(tmp_path, **kw):
    """A GRPOConfig for 2 CPU steps of a tiny model."""
    from trl import GRPOConfig

    base = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=2,
                max_completion_length=8, temperature=1.0, seed=0, use_cpu=True, bf16=False, report_to="none",
                logging_steps=1, gradient_checkpointing=False, save_strategy="no", learning_rate=1e-2)  # fmt: skip
    base.update(kw)
    return GRPOConfig(**base)


def lora_config():
    """LoRA r=4 on every linear layer."""
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")


def shuffled_collection() -> Collection:
    """Corpus order != BM25 order for query "q" (wing lift): d3 > d2 > d1, d4 not retrieved."""
    docs = {"d1": "wing note", "d2": "wing lift data", "d3": "lift of a wing lift wing", "d4": "engine noise"}
    return Collection(docs=docs, queries={"q": "wing lift"}, qrels={"q": {"d3": 2, "d2": 1}}, name="shuffled")


def bm25_order(retriever, query: str, doc_ids) -> list[str]:
    """``doc_ids`` by descending BM25 score computed independently of ``search`` (bm25s ``get_scores``); ties
    by corpus order."""
    from rankrl.rerank.bm25 import tokenize

    scores = dict(zip(retriever.doc_ids, retriever.model.get_scores(tokenize(query)).tolist(), strict=True))
    return sorted(doc_ids, key=lambda d: (-scores[d], retriever.doc_ids.index(d)))


def tiny_trec(root: Path) -> Path:
    """Three docs (one with a title field), three queries and graded qrels in the TREC layout under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs.tsv").write_text("d1\twing lift slipstream\nd2\tTitle\theat conduction slabs\nd3\tflutter panel\n")
    (root / "topics.tsv").write_text("q1\twing lift\nq2\theat conduction\nq3\tpanel flutter\n")
    (root / "qrels.txt").write_text("q1 0 d1 2\nq1 0 d3 0\nq2 0 d2 1\nq3 0 d3 -2\nq3 0 d1 1\n")
    return root
