"""Run the seeded_continuation example.

    python examples/seeded_continuation.py [--quick] [--out DIR]

Same as `rnnkern demo seeded_continuation`; the implementation is
rnnkern/examples/seeded_continuation.py, inside the package, so that the demo also
runs from an installed rnnkern.
"""

import sys

from rnnkern.examples.seeded_continuation import main

if __name__ == "__main__":
    main(sys.argv[1:])
