"""fedtrust: privacy leakage of compressed federated updates.

The core library. It imports no Flower: models, data, compressors, attacks,
metrics and result records can be used from a notebook or a script. The Flower
app lives in the top-level packages ``clients`` and ``strategies``.
"""

__version__ = "0.1.0"
