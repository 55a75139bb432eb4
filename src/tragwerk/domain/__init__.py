"""Domain rules of tragwerk. Standard library only, so every layer can depend on it."""
