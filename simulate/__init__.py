"""Simulation of contrastive training on Gaussian-mixture data (PyTorch)."""
