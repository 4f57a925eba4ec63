// Page positions (the `seq` of api_keys and audit_events), made by the service
// rather than by AUTO_INCREMENT, which under Vitess counts per shard: a 64-bit
// number, milliseconds since POSITION_EPOCH in the high bits and 22 low bits
// that start at a random value each millisecond and count up. So positions
// grow with time across instances and shards (a page token is the position of
// the page's last row, and means the same on every shard), strictly within
// one process, and two instances collide only if they pick the same 22-bit
// value in the same millisecond for the same organization (the primary key is
// (organization_id, seq)); a transaction refused for that runs again with new
// positions (see TimedPool.transaction).
//
// Rows from before this scheme keep their AUTO_INCREMENT numbers, all far
// below the first time-ordered position, so they still sort as older.
/** 2020-01-01T00:00:00Z: positions reach 2^63 in the year 2089. */
export const POSITION_EPOCH = Date.UTC(2020, 0, 1);
const LOW_BITS = 22n;
const LOW_MAX = 1 << 22;
/** The first value of a millisecond leaves room to count up within it. */
const LOW_START_MAX = 1 << 21;

let lastMs = 0;
let low = 0;

/** The next position: larger than every position this process made before. */
export function nextPosition(now: number = Date.now()): bigint {
  let ms = Math.max(now - POSITION_EPOCH, 0);
  if (ms > lastMs) {
    lastMs = ms;
    low = Math.floor(Math.random() * LOW_START_MAX);
  } else {
    // The clock stood still or went back: keep counting in the last millisecond (or the next, when full).
    ms = lastMs;
    low++;
    if (low >= LOW_MAX) {
      lastMs = ms = ms + 1;
      low = Math.floor(Math.random() * LOW_START_MAX);
    }
  }
  return (BigInt(ms) << LOW_BITS) | BigInt(low);
}
