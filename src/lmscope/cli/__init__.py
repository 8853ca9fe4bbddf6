"""Command-line interface (``lmscope``)."""
