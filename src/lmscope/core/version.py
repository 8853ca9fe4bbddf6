"""lmscope's version, defined once below the package root so every floor can read it without an upward import."""

LMSCOPE_VERSION = "0.2.0"
