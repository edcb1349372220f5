"""Run the speakers example.

    python examples/speakers.py [--quick] [--out DIR]

Same as `rnnkern demo speakers`; the implementation is
rnnkern/examples/speakers.py, inside the package, so that the demo also
runs from an installed rnnkern.
"""

import sys

from rnnkern.examples.speakers import main

if __name__ == "__main__":
    main(sys.argv[1:])
