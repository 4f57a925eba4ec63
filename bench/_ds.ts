import { openDataset } from "./dataset.js";
import { PEPPER } from "./scenarios.js";
for (const n of [10000, 100000, 1000000]) {
  const ds = await openDataset("mysql://root@127.0.0.1:3306", n, PEPPER, console.log);
  await ds.close();
}
process.exit(0);
