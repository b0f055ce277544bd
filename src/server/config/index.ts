export { DEFAULTS, SVID_TTL_MAX_SECONDS } from './defaults.js';
export { type ConfigOverrides, loadConfig, redactSecrets, validateConfig } from './load.js';
export { checkConfigSafety, prepareDirectories, type SafetyReport } from './safety.js';
export { configSchema, type ServerConfig, type ServerConfigInput } from './schema.js';
