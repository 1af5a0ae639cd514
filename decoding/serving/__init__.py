"""The embedded engine over an OpenAI-compatible HTTP API, and the Gemma chat format it speaks."""
