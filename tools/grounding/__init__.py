"""Grounding as text: followers that say, character by character, whether an edit block can still land in the file.

No tokens and no engine here: `decoding.engine.grounding` adapts these followers to a tokenizer's vocabulary, for
the embedded engine and for vLLM alike.
"""
