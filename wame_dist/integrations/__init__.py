"""Guards for training hosts that call DeepSpeed themselves: ``hf`` (HF Trainer), ``lightning`` (Lightning).

Each module imports its host package, an optional extra: ``pip install wame-dist[hf]`` / ``[lightning]``.
"""
