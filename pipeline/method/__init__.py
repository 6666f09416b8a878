"""The method: flow priors and the alignment loss, in plain PyTorch (no Ray).

Time convention, used everywhere in this package (written once, here and in ``paths``):

* ``t`` in [0, 1]; ``t = 0`` is noise, ``t = 1`` is data.
* ``x_0 ~ N(0, I)`` noise, ``x_1`` a (normalised, projected) target sample, ``y`` a latent.
* ``x_t = (1 - t) x_0 + t x_1``, conditional velocity ``u = x_1 - x_0``.
* A velocity model ``v(x_t, t)`` transports noise at ``t = 0`` to data at ``t = 1``.
"""
