import sys

from vsr_train.cli import main

sys.exit(main())
