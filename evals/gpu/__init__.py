"""Checks and comparisons run on a GPU machine against `agent serve --engine vllm`."""
