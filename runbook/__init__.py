"""Release runbook tooling: the IAM-before-deploy runbook as ordered, checked steps.

The package holds the logic; ``tasks.py`` only builds the Invoke namespace
from :mod:`runbook.tasks`. Library modules never import the task layer.
"""

__version__ = "0.1.0"
