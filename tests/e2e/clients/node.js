#!/usr/bin/env node
// Node.js HTTPS clients of the client matrix, on the machine's /usr/bin/node (OpenSSL linked statically,
// TLS through memory BIOs rather than a socket the library writes to itself).
//
// usage: node node.js --client https|fetch|http2 --allowed BASE --other BASE
//
// Sends one POST to BASE/node-<client> on the allowed and on the other base URL (two hosts, so two
// connections), with the placeholder from $API_KEY in the Authorization header and in the body. The CA
// comes from NODE_EXTRA_CA_CERTS, as applications get it.
//
// S5: keeps the Buffer it handed to the library and exits 1 printing "S5 VIOLATION" when it no longer
// holds the placeholder after the request (kloak writes the placeholder back once OpenSSL is done).
// Prints "client node-<client> pid <pid>" first, so the test can pick this process's events.
'use strict';

const https = require('node:https');
const http2 = require('node:http2');

const TIMEOUT_MS = 20000;

function sendHttps(url, headers, body) {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: 'POST', headers, timeout: TIMEOUT_MS }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

async function sendFetch(url, headers, body) {
  const res = await fetch(url, { method: 'POST', headers, body, signal: AbortSignal.timeout(TIMEOUT_MS) });
  await res.arrayBuffer();
  return res.status;
}

function sendHttp2(url, headers, body) {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const session = http2.connect(target.origin);
    session.setTimeout(TIMEOUT_MS, () => session.destroy(new Error('timed out')));
    session.on('error', reject);
    const req = session.request({ ':method': 'POST', ':path': target.pathname, ...headers });
    let status;
    req.on('response', (h) => { status = h[':status']; });
    req.on('error', reject);
    req.resume();
    req.on('end', () => {
      session.close();
      resolve(status);
    });
    req.end(body);
  });
}

const SENDERS = { https: sendHttps, fetch: sendFetch, http2: sendHttp2 };

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    if (!['--client', '--allowed', '--other'].includes(flag) || argv[i + 1] === undefined) {
      throw new Error(`usage: node.js --client ${Object.keys(SENDERS).join('|')} --allowed BASE --other BASE`);
    }
    args[flag.slice(2)] = argv[i + 1];
  }
  if (!SENDERS[args.client] || !args.allowed || !args.other) {
    throw new Error(`usage: node.js --client ${Object.keys(SENDERS).join('|')} --allowed BASE --other BASE`);
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const name = `node-${args.client}`;
  console.log(`client ${name} pid ${process.pid}`);
  const key = process.env.API_KEY;
  if (!key) throw new Error('API_KEY is not set');
  let failed = false;
  for (const base of [args.allowed, args.other]) {
    const url = `${base}/${name}`;
    // A fresh Buffer per request: the very memory handed to the library.
    const body = Buffer.from(`token=${key}`);
    try {
      const status = await SENDERS[args.client](url, { authorization: `Bearer ${key}` }, body);
      console.log(name, url, status);
    } catch (err) {
      console.log(name, url, 'error:', err.message);
      failed = true;
    }
    if (!body.includes(key)) {
      console.log(`S5 VIOLATION ${name}: the body Buffer no longer holds the placeholder`);
      failed = true;
    }
  }
  process.exitCode = failed ? 1 : 0;
}

main().catch((err) => {
  console.log('error:', err.message);
  process.exitCode = 2;
});
