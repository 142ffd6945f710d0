"""Evidence that tuning helps: llama-bench A/B runs (page cache vs huge-page store, pinned vs
unpinned), cold start to the first token, and a memory-bandwidth roofline."""
