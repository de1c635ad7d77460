"""Safety: SFT on helpful responses (f) under DPO towards safer responses (g)."""
