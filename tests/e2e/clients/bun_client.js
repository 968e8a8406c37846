// Bun client for the end-to-end scenarios: fetches each URL given, one after
// the other, with "Authorization: Bearer $API_KEY" (a placeholder under kloak),
// and prints the status. Exits 1 when a request fails.
//
// usage: bun bun_client.js URL...
const key = process.env.API_KEY;
if (!key) {
  console.error("API_KEY is not set");
  process.exit(1);
}
for (const url of process.argv.slice(2)) {
  const res = await fetch(url, { headers: { Authorization: `Bearer ${key}` } });
  console.log(url, res.status, (await res.text()).trim());
  if (!res.ok) process.exit(1);
}
