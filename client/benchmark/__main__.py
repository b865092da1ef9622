"""`python -m client.benchmark`: the same as `telemeter-benchmark`."""

import sys

from client.benchmark.cli import main

sys.exit(main())
