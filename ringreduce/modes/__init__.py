"""Training modes beyond data-parallel allreduce: a parameter server (``ps.py``, its servers'
loops in ``ps_server.py``) and a pipeline of layer stages (``pipeline.py``, one stage in
``stage.py``); ``common.py`` holds what both use."""
