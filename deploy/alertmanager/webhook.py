"""The `webhook` service of deploy/docker-compose.yml: Alertmanager's two
receivers (alertmanager.yml) post here, and each alert becomes one log line
(`docker compose -f deploy/docker-compose.yml logs -f webhook`). A stand-in
for an operator's relay to SMS, IM or an on-call system. Standard library
only, so it runs on the stock python image."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            payload = json.loads(body)
            for alert in payload.get("alerts", []):
                labels = alert.get("labels", {})
                summary = alert.get("annotations", {}).get("summary", "")
                print(
                    f"{self.path.strip('/')}: {alert.get('status')} "
                    f"{labels.get('alertname')} {json.dumps(labels, sort_keys=True)} {summary}",
                    flush=True,
                )
        except (ValueError, AttributeError):
            print(f"{self.path}: not an Alertmanager payload: {body[:200]!r}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass  # one line per alert above is enough


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5001
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
