// The membership filter's cost (src/keys/membership.ts): memory per key and the
// time to build it, at 1M and 10M keys. Synthetic hashes (random 32 bytes, as
// HMAC-SHA256 outputs are), so the database's scan time is not in it: loading
// from MySQL adds the keyset scan of key_lookup (see docs/performance.md).
//
//   npx tsx bench/membership-filter.ts [1000000 10000000]
import { randomFillSync } from "node:crypto";
import { BloomFilter } from "../src/keys/membership.js";

const sizes = process.argv.slice(2).map(Number);
for (const n of sizes.length > 0 ? sizes : [1_000_000, 10_000_000]) {
  const batch = Buffer.alloc(32 * 10_000);
  const started = performance.now();
  // Sized as a load sizes it: twice the stored keys (room to grow before a reload).
  const filter = new BloomFilter(n * 2);
  for (let done = 0; done < n; done += 10_000) {
    randomFillSync(batch);
    for (let i = 0; i < 10_000; i++) filter.addHash(batch.subarray(i * 32, i * 32 + 32));
  }
  const buildMs = performance.now() - started;
  // False positives: fresh random hashes the filter claims.
  let claimed = 0;
  const probes = 200_000;
  const probe = randomFillSync(Buffer.alloc(32 * probes));
  const t0 = performance.now();
  for (let i = 0; i < probes; i++) if (filter.hasHash(probe.subarray(i * 32, i * 32 + 32))) claimed++;
  const probeNs = ((performance.now() - t0) * 1e6) / probes;
  console.log(
    `${n.toLocaleString("en")} keys: ${(filter.bytes / 2 ** 20).toFixed(1)} MiB (${((filter.bytes * 8) / n).toFixed(1)} bits/key), ` +
      `built in ${(buildMs / 1000).toFixed(2)} s, false positives ${((claimed / probes) * 100).toFixed(2)}%, ` +
      `${probeNs.toFixed(0)} ns per lookup `,
  );
}
