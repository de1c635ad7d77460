"""Hallucination mitigation: likelihood on faithful tokens (f), unlikelihood on RAGTruth hallucinated spans (g)."""
