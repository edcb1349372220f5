"""Run the gradient_accumulation example.

    python examples/gradient_accumulation.py [--quick] [--out DIR]

Same as `rnnkern demo gradient_accumulation`; the implementation is
rnnkern/examples/gradient_accumulation.py, inside the package, so that the demo also
runs from an installed rnnkern.
"""

import sys

from rnnkern.examples.gradient_accumulation import main

if __name__ == "__main__":
    main(sys.argv[1:])
