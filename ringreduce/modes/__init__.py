"""Training modes beyond data-parallel allreduce: a parameter server (``ps``) and a pipeline of layer stages (``pipeline``)."""
