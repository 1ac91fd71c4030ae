"""Distillation: trainer, losses, EMA, checkpoints."""
