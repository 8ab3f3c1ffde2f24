"""GRPO rerankers: collections, BM25, metrics, evaluation, the rerank env, LLM recipes, the encoder reranker."""
