"""Data lmscope ships or generates: bundled prompt sets and task files (:mod:`~lmscope.data.bundled`),
the text corpus read from installed Python sources (:mod:`~lmscope.data.corpus`) and text scoring
(:mod:`~lmscope.data.text`). It imports nothing above :mod:`lmscope.core`."""
