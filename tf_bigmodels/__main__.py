"""`python -m tf_bigmodels`: the same as the `tf-bigmodels` command."""

import sys

from tf_bigmodels.cli import main

sys.exit(main())
