"""A dump site on 127.0.0.1 laid out like dumps.wikimedia.org: `/<wiki>/` lists the dump dates,
`/<wiki>/<date>/` holds `dumpstatus.json`, `<wiki>-<date>-sha1sums.txt` and the multistream
file with its index (served with Range support). A dump is published "in progress" or "done";
while in progress its multistream job says so and the sums file does not list those files,
as on the real site. Used by the data tests and the pipeline's dump-sensor tests."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from wikigpt_core.data.sources import multistream_names


class DumpSite:
    def __init__(self) -> None:
        self.dumps: dict[tuple[str, str], dict] = {}
        self.requests: list[str] = []
        self.fail_next: list[int] = []  # HTTP status codes to answer the next requests with
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                site.requests.append(self.path)
                if site.fail_next:
                    self.send_error(site.fail_next.pop(0))
                    return
                found = site._lookup(self.path)
                if found is None:
                    self.send_error(404)
                    return
                body, ctype = found
                rng = self.headers.get("Range")
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                self.send_header("Content-Type", ctype)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, wiki: str, date: str, xml: bytes, index: bytes, status: str = "done") -> None:
        xml_name, index_name = multistream_names(wiki, date)
        self.dumps[(wiki, date)] = {"status": status, "files": {xml_name: xml, index_name: index}}

    def set_status(self, wiki: str, date: str, status: str) -> None:
        self.dumps[(wiki, date)]["status"] = status

    def _lookup(self, path: str) -> tuple[bytes, str] | None:
        parts = [p for p in path.split("?")[0].split("/") if p]
        if len(parts) == 1:  # the wiki's directory listing
            dates = sorted(d for w, d in self.dumps if w == parts[0])
            if not dates:
                return None
            links = "".join(f'<a href="{d}/">{d}/</a>\n' for d in dates)
            return f"<html><body><pre>{links}</pre></body></html>".encode(), "text/html"
        if len(parts) != 3 or (parts[0], parts[1]) not in self.dumps:
            return None
        wiki, date, name = parts
        dump = self.dumps[(wiki, date)]
        done = dump["status"] == "done"
        if name == "dumpstatus.json":
            files = {n: ({"size": len(b), "sha1": hashlib.sha1(b).hexdigest()} if done else {})
                     for n, b in dump["files"].items()}
            jobs = {"articlesmultistreamdump": {"status": dump["status"], "files": files},
                    "xmlstubsdump": {"status": "done", "files": {}}}
            return json.dumps({"jobs": jobs, "version": "0.8"}).encode(), "application/json"
        if name == f"{wiki}-{date}-sha1sums.txt":
            listed = dump["files"] if done else {}
            return "".join(f"{hashlib.sha1(b).hexdigest()}  {n}\n" for n, b in listed.items()).encode(), "text/plain"
        if name in dump["files"] and done:
            return dump["files"][name], "application/octet-stream"
        return None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
