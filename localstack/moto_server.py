"""moto server with DynamoDB requests serialised.

moto's DynamoDB backend takes no lock: concurrent TransactWriteItems or
conditional UpdateItem calls can interleave (a failed transaction restores a
copy of the table taken before a concurrent winner wrote), which real DynamoDB
never does. latchkey's tests race conditional writes on purpose, so this
launcher runs moto's own WSGI app behind one lock for DynamoDB calls. Other
services (SQS long polls included) stay concurrent.

It also answers `GET /latchkey/ses.json`: moto's record of sent SES mail,
shaped as the `ses` part of `/moto-api/data.json`. That document serialises
every model instance moto has ever made (it keeps them all until a reset:
every table, item and stream record of the run) while holding the
interpreter, which late in a test run took 6 s per read and held up every
other request meanwhile; this one serialises the SES models only.
"""

import argparse
import json
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


SES_SENT_PATH = "/latchkey/ses.json"


def ses_models() -> dict:
    """The SES models' instances as `/moto-api/data.json` gives them: each
    public attribute that JSON can encode."""
    from moto.core.model_instances import model_data

    out = {}
    for name, model in sorted(model_data.get("ses", {}).items()):
        rows = []
        for instance in list(model.instances_tracked):
            row = {}
            for attr in dir(instance):
                if attr.startswith("_"):
                    continue
                try:
                    value = getattr(instance, attr)
                    json.dumps(value)
                except (TypeError, AttributeError, ValueError):
                    continue
                row[attr] = value
            rows.append(row)
        out[name] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ, start_response):
        if environ.get("PATH_INFO") == SES_SENT_PATH and environ.get("REQUEST_METHOD") == "GET":
            body = json.dumps({"ses": ses_models()}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("DynamoDB_"):
            with lock:
                # Materialise the body inside the lock: the handler runs lazily.
                return list(app(environ, start_response))
        return app(environ, start_response)

    run_simple(args.host, args.port, serialised, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
