"""Drafters: cheap guesses of the next tokens (prompt lookup, the edit-aware cursor, the MTP head, hybrid)."""
