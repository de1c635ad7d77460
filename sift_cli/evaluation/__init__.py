"""Evaluation: the app metrics of a run, lm-eval glue, the LLM judge and greedy generation."""
