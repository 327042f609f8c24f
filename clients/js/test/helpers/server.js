// A real HTTP origin on 127.0.0.1 (port 0) serving a Map of files, with the
// misbehaviours of the vectors' `serve`: status, drip_bytes_per_second, endless;
// and declare_length (a Content-Length larger than the body).
import http from "node:http";

const TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json", ".html": "text/html" };

function typeOf(path) {
  const m = /\.[a-z0-9]+$/.exec(path);
  return (m && TYPES[m[0]]) || "application/octet-stream";
}

/** `files`: a Map path → bytes, or a function returning one (read at each request). */
export async function serve(files, { prefix = "" } = {}) {
  const behaviours = new Map();
  const requests = [];
  const current = typeof files === "function" ? files : () => files;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://origin");
    let path = decodeURIComponent(url.pathname).slice(1);
    if (prefix && path.startsWith(prefix)) path = path.slice(prefix.length);
    requests.push(path);
    const b = behaviours.get(path) ?? {};
    if (b.handler) return b.handler(req, res);
    if (b.status) {
      res.writeHead(b.status, { "content-type": "text/plain" });
      res.end(`status ${b.status}`);
      return;
    }
    if (b.endless) {
      // No length, never ends: a chunk after another until the client hangs up (bounded at 256 MiB).
      res.writeHead(200, { "content-type": typeOf(path) });
      const chunk = Buffer.alloc(16 * 1024, 0x20);
      let sent = 0;
      const pump = () => {
        while (!res.destroyed && sent < 256 * 1024 * 1024) {
          sent += chunk.length;
          if (!res.write(chunk)) return res.once("drain", pump);
        }
        res.end();
      };
      pump();
      return;
    }
    const body = current().get(path);
    if (!body) {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found");
      return;
    }
    if (b.drip_bytes_per_second) {
      res.writeHead(200, { "content-type": typeOf(path), "content-length": body.length });
      const step = Math.max(1, Math.floor(b.drip_bytes_per_second / 10));
      let at = 0;
      const timer = setInterval(() => {
        if (res.destroyed) return clearInterval(timer);
        res.write(body.subarray(at, at + step));
        at += step;
        if (at >= body.length) {
          clearInterval(timer);
          res.end();
        }
      }, 100);
      res.on("close", () => clearInterval(timer));
      return;
    }
    if (b.declare_length) {
      res.writeHead(200, { "content-type": typeOf(path), "content-length": b.declare_length });
      res.write(body);
      return; // never ends: the client must refuse on the header alone
    }
    res.writeHead(200, { "content-type": typeOf(path), "content-length": body.length, ...(b.headers ?? {}) });
    res.end(body);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${server.address().port}/${prefix}`;
  return {
    base,
    indexUrl: `${base}remote-index.json`,
    behaviours,
    requests,
    server,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
