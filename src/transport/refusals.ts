// What the transports refused to take on, by reason: plain counters, read by
// metrics (apikeys_refused_total), so an operator sees a flood, a slow-client
// attack or a misbehaving prober without logs.
export class Refusals {
  /** HTTP connections dropped because HTTP_MAX_CONNECTIONS were open. */
  httpConnectionLimit = 0;
  /** HTTP requests whose headers or body did not arrive in time (HTTP_HEADERS_TIMEOUT_SECONDS, HTTP_REQUEST_TIMEOUT_SECONDS). */
  httpTimeout = 0;
  /** gRPC Health.Watch streams refused because HEALTH_MAX_WATCHES were open. */
  healthWatchLimit = 0;
}
