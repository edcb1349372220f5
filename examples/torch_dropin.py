"""Run the torch_dropin example (needs PyTorch).

    python examples/torch_dropin.py [--quick] [--out DIR]

Same as `rnnkern demo torch_dropin`; the implementation is
rnnkern/examples/torch_dropin.py, inside the package, so that the demo also
runs from an installed rnnkern.
"""

import sys

from rnnkern.examples.torch_dropin import main

if __name__ == "__main__":
    main(sys.argv[1:])
