"""``WeightTransferError``: weights that cannot initialize the model (``--init-from``)."""

from __future__ import annotations


class WeightTransferError(ValueError):
    """A source of ``WeightTransfer`` cannot be read, or a weight other than a class-dependent
    one has a different shape in the source and in the model; the message names the file,
    the layer and both shapes."""
