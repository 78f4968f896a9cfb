"""Messages sent from two places at once: the header pass's own bytes and the caller's array
behind them (``collectives/header.py``), without copying the array into one buffer."""
from mpi4py import MPI


class JoinedSends:
    """Messages of a fixed head (the bytes of ``head``, an array of ours) followed by a
    caller's contiguous array, sent from where both lie instead of copied into one buffer:
    an MPI struct datatype per (array address, length), kept for the next call on the same
    array (a training loop's buffers come back), at most ``keep`` of them. The bytes sent
    are those of the head and the array, joined, as one contiguous message would carry."""

    def __init__(self, head, keep=64):
        self.head, self.head_bytes = MPI.Get_address(head), head.nbytes
        self.keep = keep
        self.kept = {}

    def message(self, arr):
        """The message of the head and ``arr`` (its address and length as they are now)."""
        key = (MPI.Get_address(arr), arr.nbytes)
        msg = self.kept.get(key)
        if msg is None:
            if len(self.kept) >= self.keep:
                self.clear()
            dt = MPI.Datatype.Create_struct([self.head_bytes, arr.nbytes], [self.head, key[0]],
                                            [MPI.BYTE, MPI.BYTE]).Commit()
            msg = self.kept[key] = [MPI.BOTTOM, 1, dt]
        return msg

    def clear(self):
        for msg in self.kept.values():
            msg[2].Free()
        self.kept.clear()
