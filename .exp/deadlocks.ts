import mysql from "mysql2/promise";
import { randomBytes } from "node:crypto";
import { Role } from "../gen/apikeys/v1/apikeys_pb.js";
import { MySqlStore } from "../src/store/mysql-store.js";
import { freshDatabase } from "../test/helpers/mysql.js";
import { auditRecord, keyRecord } from "../test/helpers/records.js";

const db = await freshDatabase();
const stores = await Promise.all([1, 2, 3].map(() => MySqlStore.open(db.url)));
await stores[0].migrate();
const conn = await mysql.createConnection(db.url);
const dl = async () => Number(((await conn.query("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")) as any)[0][0].Value);
const before = await dl();
const org = "org_dl";
let failed = 0;
const started = Date.now();
await Promise.all(stores.flatMap((store, s) => Array.from({ length: 300 }, (_, i) => {
  const createdBy = `u_${Math.floor(Math.random() * 2000)}`;
  const key = keyRecord({ organizationId: org, createdBy });
  return store.createKey({ key, hash: randomBytes(32), creatorRole: i % 2 ? Role.MEMBER : Role.ADMIN, requestId: "", audit: auditRecord(org, "key.create", { keyId: key.id }) }).catch((e) => { failed++; console.log(String(e)); });
})));
console.log({ deadlocks: (await dl()) - before, failed, ms: Date.now() - started });
await conn.end();
await Promise.all(stores.map((s) => s.close()));
await db.drop();
