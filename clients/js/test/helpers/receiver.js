// A beacon listener on 127.0.0.1 (port 0) standing for the control plane's:
// it records every request and answers as the test says, with CORS `*` as the
// real one (docs/beacons.md).
import http from "node:http";

/** `requests`: {method, path, type, body} of each; `answers`: the next answers, {status, answer, headers} or {hangup: true}. */
export async function receiver() {
  const requests = [];
  const answers = [];
  const waiting = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      requests.push({ method: req.method, path: req.url, type: req.headers["content-type"], body: body ? JSON.parse(body) : null });
      const { status = 202, answer = { accepted: true }, headers = {}, hangup = false } = answers.shift() ?? {};
      if (hangup) return req.socket.destroy();
      res.writeHead(status, { "content-type": "application/json", "access-control-allow-origin": "*", ...headers });
      res.end(JSON.stringify(answer));
      for (const w of waiting.splice(0)) w();
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    answers,
    get batches() {
      return requests.map((r) => r.body);
    },
    /** Resolves once `n` requests arrived; rejects after `ms` (a test fails, never hangs). */
    async arrived(n, ms = 30_000) {
      const deadline = Date.now() + ms;
      while (requests.length < n) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`${requests.length} of ${n} requests arrived in ${ms} ms`);
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, left);
          waiting.push(() => (clearTimeout(timer), resolve()));
        });
      }
      return requests;
    },
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
