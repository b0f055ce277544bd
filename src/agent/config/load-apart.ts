/**
 * `run` loads its configuration in a worker thread that ends once it has answered. Reading YAML
 * and validating it (yaml, zod and its locales: about 4 MiB of V8 heap, most of it module source
 * and code) is needed once at start-up, and ES modules are never unloaded from the thread that
 * imported them; in a worker they go with its heap when it exits.
 *
 * @module
 */
import { Worker } from 'node:worker_threads';
import { AgentError } from '../errors.js';
import type { AgentConfigOverrides } from './load.js';
import type { AgentConfig } from './schema.js';

type Answer = { config: AgentConfig } | { error: { code: string; message: string } };

/** The configuration {@link loadAgentConfig} gives for `options`, loaded in a worker; refusals as it throws them. */
export function loadAgentConfigApart(options: {
  file?: string;
  overrides?: AgentConfigOverrides;
}): Promise<AgentConfig> {
  return new Promise((resolve, reject) => {
    // No execArgv: scripts preloaded into the agent (`--require`, `--import`) are not run again here.
    const worker = new Worker(new URL('./load-worker.js', import.meta.url), {
      workerData: options,
      execArgv: [],
    });
    let answer: Answer | undefined;
    worker.once('message', (message: Answer) => {
      answer = message;
    });
    worker.once('error', reject);
    worker.once('exit', (code) => {
      if (answer === undefined)
        reject(new Error(`the configuration loader's worker exited with code ${code} without an answer`));
      else if ('config' in answer) resolve(answer.config);
      else reject(new AgentError(answer.error.code, answer.error.message));
    });
  });
}
