"""RMU unlearning: forget hazardous text (g) while keeping general text (f) at a chosen layer."""
