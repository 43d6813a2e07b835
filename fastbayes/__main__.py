"""``python -m fastbayes`` is the ``fastbayes`` command."""
import sys

from .cli import main

sys.exit(main())
