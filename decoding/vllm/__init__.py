"""vLLM: launching it for Gemma 4, exporting the embedded model for it, and the lookup drafter plugins."""
