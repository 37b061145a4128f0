// Peer figure for docs/benchmarks.md: Node's rate-limiter-flexible (RateLimiterRedis over one
// ioredis connection) consuming 1 point on one key with N requests in flight.
// Usage: npm install && node rate-limiter-flexible.js [PORT] [IN_FLIGHT] [SECONDS]
const Redis = require('ioredis');
const { RateLimiterRedis } = require('rate-limiter-flexible');

const port = Number(process.argv[2] || 6379);
const inFlight = Number(process.argv[3] || 64);
const seconds = Number(process.argv[4] || 5);

async function main() {
  const client = new Redis({ port, enableOfflineQueue: false });
  await new Promise((resolve) => client.once('ready', resolve));
  const limiter = new RateLimiterRedis({
    storeClient: client,
    keyPrefix: 'rlflx-bench',
    points: 1e9,
    duration: 3600,
  });
  let done = 0;
  const deadline = Date.now() + seconds * 1000;
  async function worker() {
    while (Date.now() < deadline) {
      try {
        await limiter.consume('hot', 1);
      } catch (e) {
        if (e instanceof Error) throw e;
      }
      done += 1;
    }
  }
  // Warm up for one second, then measure.
  const warm = Date.now() + 1000;
  await Promise.all(Array.from({ length: inFlight }, async () => {
    while (Date.now() < warm) await limiter.consume('hot', 1).catch(() => {});
  }));
  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: inFlight }, worker));
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(`rate-limiter-flexible ${inFlight} in flight: ${Math.round(done / elapsed)} decisions/s`);
  client.disconnect();
}

main().catch((e) => { console.error(e); process.exit(1); });
