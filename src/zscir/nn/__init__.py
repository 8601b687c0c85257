"""Shared layers: LoRA adapters."""
