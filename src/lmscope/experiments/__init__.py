"""Recipes that reproduce the seeds' findings; ``lmscope tour`` runs them all into one report."""
