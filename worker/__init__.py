"""asset-worker: polls asynchronous generation jobs, stores every asset, proves each copy whole.

The public Python API is :func:`submit` and :func:`submit_async` (enqueue jobs from another
program); everything else is reached through the ``asset-worker`` command.
"""

from worker.enqueue import submit, submit_async

__all__ = ["submit", "submit_async"]
