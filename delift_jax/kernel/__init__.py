"""The DELIFT utility kernel: pair scoring with prefix reuse, sharded, stored crash-safely, dense or top-k sparse."""

from delift_jax.kernel.compute import utility_kernel
from delift_jax.kernel.config import KernelConfig
from delift_jax.kernel.outputs import KernelResult
from delift_jax.kernel.store import KernelStoreMismatchError

__all__ = ["KernelConfig", "KernelResult", "KernelStoreMismatchError", "utility_kernel"]
