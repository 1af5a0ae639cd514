"""The line-block grammar shared by search/replace and udiff: its markers, once for every package."""

SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"
