"""The names every layer agrees on (ringreduce.core.tables), kept apart from what they name so
that the configuration can validate without importing the algorithms and MPI."""
import ringreduce
from ringreduce import algorithms
from ringreduce.core.tables import ALGORITHM_NAMES


def test_algorithm_names_are_the_algorithms():
    assert ALGORITHM_NAMES[0] == "auto"
    assert ALGORITHM_NAMES[1:] == tuple(algorithms.ALGORITHMS)


def test_the_public_names_are_the_table():
    assert tuple(ringreduce.ALGORITHM_NAMES) == ALGORITHM_NAMES
