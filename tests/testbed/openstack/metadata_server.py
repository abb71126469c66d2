"""Loopback stand-in for the Nova metadata service, as seen from the conversion host.

Serves the file written by provision.py (re-read on every request) at the paths the real
service uses: /openstack, /openstack/latest/meta_data.json, /openstack/<date>/meta_data.json.
Stdlib only.
"""
import argparse
import http.server
import json
import os

VERSIONS = ["2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30",
            "2016-10-06", "2017-02-22", "2018-08-27", "2020-10-14", "latest"]


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "osm-testbed-metadata/1"
    meta_file = None

    def _send(self, code, body, ctype="text/plain; charset=UTF-8"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        parts = [p for p in path.split("/") if p]
        if parts == ["openstack"]:
            return self._send(200, "\n".join(VERSIONS))
        if len(parts) >= 2 and parts[0] == "openstack" and parts[1] in VERSIONS:
            if len(parts) == 2:
                return self._send(200, "meta_data.json\nnetwork_data.json\nvendor_data.json\nvendor_data2.json")
            if parts[2:] == ["meta_data.json"]:
                try:
                    with open(self.meta_file, "rb") as f:
                        return self._send(200, f.read(), "application/json")
                except FileNotFoundError:
                    return self._send(404, "metadata not provisioned yet")
            if parts[2:] in (["vendor_data.json"], ["vendor_data2.json"]):
                return self._send(200, "{}", "application/json")
            if parts[2:] == ["network_data.json"]:
                return self._send(200, json.dumps({"links": [], "networks": [], "services": []}),
                                  "application/json")
        return self._send(404, "Not Found")

    def log_message(self, fmt, *args):  # one line per request in the bed's log
        print("%s %s" % (self.address_string(), fmt % args), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8775)
    ap.add_argument("--file", required=True)
    a = ap.parse_args()
    Handler.meta_file = os.path.abspath(a.file)
    srv = http.server.ThreadingHTTPServer((a.bind, a.port), Handler)
    srv.daemon_threads = True
    srv.serve_forever()


if __name__ == "__main__":
    main()
