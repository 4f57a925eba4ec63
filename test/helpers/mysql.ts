// A fresh MariaDB database per test file, dropped afterwards, so tests never
// see each other's rows. MYSQL_TEST_URL points at the server (default: local root).
import { randomBytes } from "node:crypto";
import mysql from "mysql2/promise";

const SERVER_URL = process.env.MYSQL_TEST_URL ?? "mysql://root@127.0.0.1:3306";

export interface TestDatabase {
  /** mysql://…/<fresh database name> */
  url: string;
  name: string;
  /** Creates the (empty) database; a store's migrate() does it too. */
  create(): Promise<void>;
  drop(): Promise<void>;
}

export async function freshDatabase(): Promise<TestDatabase> {
  const name = `apikeys_test_${randomBytes(6).toString("hex")}`;
  const url = `${SERVER_URL.replace(/\/+$/, "")}/${name}`;
  const onServer = async (sql: string) => {
    const conn = await mysql.createConnection(SERVER_URL);
    try {
      await conn.query(sql);
    } finally {
      await conn.end();
    }
  };
  return {
    url,
    name,
    create: () => onServer(`CREATE DATABASE \`${name}\``),
    drop: () => onServer(`DROP DATABASE IF EXISTS \`${name}\``),
  };
}
