/**
 * The worker load-apart.ts starts: loads the configuration as {@link loadAgentConfig} does and
 * posts the result, or the AgentError's code and message, to the agent's main thread. Anything
 * else thrown ends the worker with that error, which the main thread receives as its `error` event.
 *
 * @module
 */
import { parentPort, workerData } from 'node:worker_threads';
import { AgentError } from '../errors.js';
import { type AgentConfigOverrides, loadAgentConfig } from './load.js';

const options = workerData as { file?: string; overrides?: AgentConfigOverrides };
try {
  parentPort?.postMessage({ config: loadAgentConfig(options) });
} catch (error) {
  if (!(error instanceof AgentError)) throw error;
  parentPort?.postMessage({ error: { code: error.code, message: error.message } });
}
