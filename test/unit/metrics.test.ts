import { describe, expect, it } from "vitest";
import { VerifyStats } from "../../src/keys/verifier.js";
import { Metrics } from "../../src/observability/metrics.js";
import { Refusals } from "../../src/transport/refusals.js";

describe("RPC duration histogram", () => {
  it("exports cumulative buckets, +Inf, sum and count per method, code and protocol", async () => {
    const metrics = new Metrics({ verifier: { stats: new VerifyStats() }, cache: null, broadcast: null, lastUsed: { writes: 0 }, pool: null, refusals: new Refusals() });
    const path = "/apikeys.v1.ApiKeyService/VerifyKey";
    for (const seconds of [0.0001, 0.0005, 0.003, 20]) metrics.recordRpc(path, 0, "grpc", seconds);
    metrics.recordRpc(path, 5, "connect", 0.002);
    const text = await metrics.registry.metrics();
    const labels = 'service="apikeys.v1.ApiKeyService",method="VerifyKey",code="OK",protocol="grpc"';
    const line = (name: string) => new RegExp(`^${name.replace(/[{}+.]/g, "\\$&")} (\\S+)$`, "m").exec(text)?.[1];
    expect(line(`apikeys_rpc_duration_seconds_bucket{le="0.0005",${labels}}`)).toBe("2"); // ≤ 0.5 ms, inclusive
    expect(line(`apikeys_rpc_duration_seconds_bucket{le="0.001",${labels}}`)).toBe("2");
    expect(line(`apikeys_rpc_duration_seconds_bucket{le="0.005",${labels}}`)).toBe("3");
    expect(line(`apikeys_rpc_duration_seconds_bucket{le="10",${labels}}`)).toBe("3");
    expect(line(`apikeys_rpc_duration_seconds_bucket{le="+Inf",${labels}}`)).toBe("4");
    expect(line(`apikeys_rpc_duration_seconds_count{${labels}}`)).toBe("4");
    expect(Number(line(`apikeys_rpc_duration_seconds_sum{${labels}}`))).toBeCloseTo(20.0036, 6);
    expect(line('apikeys_rpc_duration_seconds_count{service="apikeys.v1.ApiKeyService",method="VerifyKey",code="NOT_FOUND",protocol="connect"}')).toBe("1");
    expect(text).toContain("# TYPE apikeys_rpc_duration_seconds histogram");
  });
});
