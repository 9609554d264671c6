"""The attention-knockout study (Gou et al., arXiv 2508.15360).

specs.py    which edges a knockout removes in which layers; sweeps of settings x kinds
engine.py   the sweep engine: one clean run, each spec's knocked-out tail recomputed exactly
metrics.py  accuracy, performance ratio, delta log p, flips; the summary of a run's records
plots.py    global 1, global 2 and fine-grained plots (layers 1-based)
"""
