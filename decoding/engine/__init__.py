"""The target model and the generate loop: loading, the Gemma forward with its KV cache, sampling, verification."""
