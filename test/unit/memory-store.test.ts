import { MemoryStore } from "../../src/store/memory-store.js";
import { describeStoreContract } from "../contract/store-contract.js";

describeStoreContract("memory", async () => ({ store: new MemoryStore(), cleanup: async () => {} }));
