"""Core reliability tests: each RELIABILITY.md promise, held to its pass criterion on every tiny family.

A1-A7 hooks ........................ test_hooks.py
B8, B9, B12 parity with HF ......... test_parity.py (bundled model and nnsight peer check: test_bundled.py)
B10, D17 edits ..................... test_edits.py
C13, C14, C16 inputs ............... test_inputs.py
C15 generation / KV cache .......... test_generation.py
D18 determinism .................... test_determinism.py
E20, E24 artifacts ................. test_artifacts.py
F25, F26 memory .................... test_memory.py
G bad input (core rows) ............ test_errors.py, test_inputs.py, test_artifacts.py, test_generation.py
sites / metrics .................... test_sites.py, test_metrics.py
"""
