"""`python -m tf_bigmodels.serving [NAME=]PATH ...`: the same as `tf-bigmodels serve`."""

import sys

from tf_bigmodels.serving.cli import main

sys.exit(main())
