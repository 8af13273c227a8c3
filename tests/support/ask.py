"""Send one client message to a master and print its JSON reply (run inside a test host).

    python3 ask.py HOST:PORT '{"message_type": "cluster_status"}'

Signs with $MAPREDUCE_SECRET_FILE if set. Exits 1, printing nothing, when
there is no reply.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import helper  # noqa: E402
from mrlib import auth  # noqa: E402


def main(address, text):
    path = auth.secret_path(None)
    helper.use_secret(auth.read_secret(path) if path else None)
    host, port = helper.parse_address(address)
    try:
        reply = helper.request(host, port, json.loads(text), reply_timeout=10)
    except (OSError, helper.ProtocolError):
        return 1
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
