"""GRPO rerankers: IR collections, BM25, metrics, the rerank env, recipes, the encoder reranker."""
