// Request/answer between a benchmark script and the copies of itself it forks (one per role: a
// server, a group of agents), so each role's CPU is its own process's.
import { fork } from 'node:child_process';

/** Answers requests from the parent: `handlers[type](message)`, replies carry the request's id. */
export function serve(handlers) {
  process.on('message', async (message) => {
    try {
      const result = await handlers[message.type](message);
      process.send({ id: message.id, result });
    } catch (error) {
      process.send({ id: message.id, error: error?.stack ?? String(error) });
    }
  });
}

/** `script` forked with `--role role`; `call(type, fields)` resolves to that child's answer. */
export function child(script, role, execArgv = []) {
  const proc = fork(script, ['--role', role], { serialization: 'advanced', execArgv });
  const waiting = new Map();
  let next = 0;
  proc.on('message', ({ id, result, error }) => {
    const w = waiting.get(id);
    waiting.delete(id);
    if (error !== undefined) w.reject(new Error(`${role}: ${error}`));
    else w.resolve(result);
  });
  proc.on('exit', (code) => {
    for (const w of waiting.values()) w.reject(new Error(`${role} process exited with ${code}`));
    waiting.clear();
  });
  return {
    proc,
    call: (type, fields = {}) =>
      new Promise((resolve, reject) => {
        const id = next++;
        waiting.set(id, { resolve, reject });
        proc.send({ id, type, ...fields });
      }),
  };
}
