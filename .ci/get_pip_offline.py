"""Stand-in for the get-pip.py that ansible-test downloads to bootstrap pip into its sanity
virtual environments (from a host that is not a package index, so unreachable where only
package indexes are). Same contract: run as __main__ by ansible-test's quiet_pip.py inside the
new venv, with pip's arguments (``pip==X.Y`` and other pins, ``--no-setuptools``,
``--no-wheel``) in sys.argv. Pip comes from the Python installation's own ensurepip; the pins
are then installed with that pip from the configured index."""

import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
# in a child: ensurepip points PIP_CONFIG_FILE at /dev/null in its own process, which would
# drop the machine's pip configuration (index, certificates) for the install below
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                       "-q", *args])
