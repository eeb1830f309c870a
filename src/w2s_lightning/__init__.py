"""w2s-lightning: weak-to-strong generalization experiments on Hydra + PyTorch Lightning."""

__version__ = "0.1.0"
