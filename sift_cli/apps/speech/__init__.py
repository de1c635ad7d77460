"""Speech adaptation: text-token cross-entropy (f) while learning to speak (g) on interleaved sequences.

Each module does one job so that a backend (a TTS engine, a speech tokenizer, a speech decoder) can be
swapped without touching the others; `app.py` wires them together.
"""
