// HTTPS keep-alive client for scripts/bench-runtimes.sh and tests/e2e/doctor.sh (Node.js or Bun).
//
// usage: client.js URL COUNT [--hold]
//
// One connection, one warm-up request (the handshake), then COUNT timed POST requests whose
// 1 KiB body carries $BENCH once; prints "ns_per_request N". With --hold it then prints
// "ready" and waits until killed. Trusts $SSL_CERT_FILE.
'use strict';
const fs = require('fs');
const https = require('https');

const [url, countText, hold] = process.argv.slice(2);
const count = Number(countText);
const ca = process.env.SSL_CERT_FILE ? fs.readFileSync(process.env.SSL_CERT_FILE) : undefined;
const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca });
const mark = Buffer.from(process.env.BENCH || '');
const payload = Buffer.alloc(1024, 'y');
payload.fill('x', 0, 64);
mark.copy(payload, 64);

function request() {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: 'POST', agent, headers: { 'Content-Length': payload.length } }, (res) => {
      res.on('data', () => {});
      res.on('end', resolve);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

(async () => {
  await request();
  const start = process.hrtime.bigint();
  for (let i = 0; i < count; i++) await request();
  console.log('ns_per_request', String((process.hrtime.bigint() - start) / BigInt(count)));
  agent.destroy();
  if (hold === '--hold') {
    console.log('ready');
    setInterval(() => {}, 1 << 30);
  }
})().catch((err) => {
  console.error('client.js:', err.message);
  process.exit(1);
});
