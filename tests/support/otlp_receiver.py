"""An OTLP/HTTP trace receiver for the integration tests.

Listens on 127.0.0.1 (an ephemeral port, printed as the first line of stdout), decodes
every POST body as an ExportTraceServiceRequest with the official opentelemetry-proto
package, and appends one JSON line per span to the file given as argv[1]:
{"service", "trace_id", "span_id", "parent_span_id", "name", "kind", "trace_state",
 "status_code", "status_message", "flags", "start", "end", "attributes": {key: value},
 "path", "content_type", "headers"}. A body that does not decode gets a 400 and an
{"error": ...} line.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2  # noqa: F401  (AnyValue)

OUT = sys.argv[1]


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        lines = []
        try:
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                res = {kv.key: value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        lines.append({
                            "service": res.get("service.name"),
                            "scope": ss.scope.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": s.kind,
                            "trace_state": s.trace_state,
                            "status_code": s.status.code,
                            "status_message": s.status.message,
                            "flags": s.flags,
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                            "path": self.path,
                            "content_type": self.headers.get("content-type"),
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                        })
            status = 200
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        except Exception as e:  # noqa: BLE001
            lines = [{"error": repr(e)}]
            status = 400
            answer = b""
        with open(OUT, "a") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
        self.send_response(status)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
