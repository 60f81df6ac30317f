import sys

from rnnserve.training.cli import main

sys.exit(main())
