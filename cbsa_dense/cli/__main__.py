"""``python -m cbsa_dense.cli``: the ``cbsa-dense`` command."""

import sys

from cbsa_dense.cli.entry import main

sys.exit(main())
