"""
C{python -m bench}: see L{bench}.
"""

import sys

from bench.main import main

sys.exit(main())
