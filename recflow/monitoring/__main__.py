import sys

from recflow.monitoring.service import main

if __name__ == "__main__":
    sys.exit(main())
