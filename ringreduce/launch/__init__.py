"""Launching jobs: ``ringreduce-run`` (``run``) and hostfiles (``hostfile``)."""
