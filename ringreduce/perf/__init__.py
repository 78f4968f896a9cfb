"""Measuring: the nccl-tests style benchmark (``bench``) and the alpha-beta-gamma cost model (``model``)."""
