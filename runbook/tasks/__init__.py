"""The Invoke task layer: thin tasks that parse flags and call the library.

Nothing in the library imports this package. :func:`namespace` builds the
collection that ``tasks.py`` exposes.
"""

from __future__ import annotations

from invoke import Collection


def namespace() -> Collection:
    """The root collection: ``release`` and the ``config``, ``iam`` and ``ci`` collections."""
    from runbook.tasks import ci_tasks, config_tasks, iam_tasks, release_tasks

    ns = Collection()
    ns.add_collection(Collection.from_module(config_tasks, name="config"))
    ns.add_collection(Collection.from_module(iam_tasks, name="iam"))
    ns.add_collection(Collection.from_module(ci_tasks, name="ci"))
    ns.add_task(release_tasks.release)
    return ns
