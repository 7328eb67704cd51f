"""Simulation of contrastive training on Gaussian-mixture data (PyTorch).

Everything works on stacks of independent runs: embeddings carry a leading run dimension
``(R, B, D)`` so that many configurations train as one program.

Modules: ``data`` (Gaussian mixtures, views), ``losses`` (NT-Xent, SupCon, DCL, VICReg,
Barlow Twins, cosine pair terms, CLOP), ``models`` (free embeddings, stacked MLP, update
modes), ``metrics`` (effective rank, variance, cosine statistics, NC1, probes, collapse state).
"""
