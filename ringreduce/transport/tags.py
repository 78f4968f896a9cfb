"""Every message tag ringreduce sends with, in one table. Tags keep the phases of one call
apart even when two phases talk to the same neighbour; traffic of different layers also
travels on different communicators (the engine's control and data duplicates)."""

TAG_REDUCE = 11    # reduce-scatter / reduce-to-root segments
TAG_GATHER = 12    # allgather segments
TAG_FOLD = 13      # folding onto a power of two, and the header pass
TAG_BCAST = 14     # broadcast segments
TAG_REQUEST = 21   # engine: a rank's submitted tensors, to the coordinator
TAG_RESPONSE = 22  # engine: the coordinator's response, to every rank
TAG_WATCH = 31     # never sent: shm's wait probes it only to learn of a lost rank (ULFM)
