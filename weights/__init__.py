"""Shipped tiny backbones: open_clip model configs (JSON) and their weights (safetensors).

The weights are random initialisations made deterministically by ``generate.py``; they exist so
that tests, examples and CI run on a CPU with no network. They detect nothing by themselves.
"""
