"""moto server with DynamoDB requests serialised.

moto's DynamoDB backend takes no lock: concurrent TransactWriteItems or
conditional UpdateItem calls can interleave (a failed transaction restores a
copy of the table taken before a concurrent winner wrote), which real DynamoDB
never does. latchkey's tests race conditional writes on purpose, so this
launcher runs moto's own WSGI app behind one lock for DynamoDB calls. Other
services (SQS long polls included) stay concurrent.
"""

import argparse
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("DynamoDB_"):
            with lock:
                # Materialise the body inside the lock: the handler runs lazily.
                return list(app(environ, start_response))
        return app(environ, start_response)

    run_simple(args.host, args.port, serialised, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
