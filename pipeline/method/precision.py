"""Training precisions (no torch import, so the CLI can offer them without loading torch).

``fp32``: everything in float32. ``bf16``: the flow-matching forward and backward run under
``torch.autocast(dtype=torch.bfloat16)`` (matmuls in bf16, reductions and norms as autocast keeps
them); parameters, optimiser state, the EMA, the loss reduction, likelihoods and every metric stay
float32. See :func:`pipeline.method.training.autocast`.
"""

PRECISIONS = ("fp32", "bf16")
