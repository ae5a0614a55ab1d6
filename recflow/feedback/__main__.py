import sys

from recflow.feedback.service import main

if __name__ == "__main__":
    sys.exit(main())
