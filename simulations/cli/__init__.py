"""The `llamdex` command line: one verb per module, each registering its own sub-parser."""
