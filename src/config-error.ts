/** Start-up configuration that cannot work; its message names the variable at fault. */
export class ConfigError extends Error {}
