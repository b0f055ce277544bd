/**
 * The demo's child processes: each one's output goes to a log file in the demo directory and is
 * kept (the last lines) for error messages; the demo waits on JSON log lines, and every child is
 * stopped by {@link Children.stopAll}, whatever happened before.
 *
 * @module
 */
import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { DemoError } from './errors.js';

const TAIL_LINES = 40;
const HISTORY_LINES = 10_000;
const STOP_GRACE_MS = 10_000;

/** A pino-style JSON log line (other lines are kept as `{ msg: text }`). */
export type LogLine = Readonly<Record<string, unknown>> & { readonly msg?: unknown };

type Waiter = (line: LogLine) => void;

/** One child process of the demo. */
export class Child {
  readonly name: string;
  readonly logFile: string;
  readonly process: ChildProcess;
  readonly #tail: string[] = [];
  /** Every parsed line so far, so a wait also sees what arrived before it began. */
  readonly #history: LogLine[] = [];
  readonly #waiters = new Set<Waiter>();
  readonly #exited: Promise<void>;
  readonly #log: WriteStream;

  constructor(name: string, logDir: string, command: string, args: readonly string[], options: SpawnOptions) {
    this.name = name;
    this.logFile = join(logDir, `${name}.log`);
    this.#log = createWriteStream(this.logFile, { mode: 0o600 });
    this.process = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let partial = '';
    const onData = (chunk: Buffer) => {
      this.#log.write(chunk);
      const lines = (partial + chunk.toString()).split('\n');
      partial = lines.pop() ?? '';
      for (const text of lines) this.#line(text);
    };
    this.process.stdout?.on('data', onData);
    this.process.stderr?.on('data', onData);
    this.#exited = new Promise((resolve) => {
      let finished = false;
      const done = () => {
        if (finished) return;
        finished = true;
        if (partial !== '') this.#line(partial);
        partial = '';
        this.#log.end();
        resolve();
      };
      // 'close': the process has exited and its output is fully read.
      this.process.once('close', done);
      this.process.once('error', (error) => {
        this.#line(`could not start ${command}: ${error.message}`);
        done();
      });
    });
  }

  #line(text: string): void {
    if (text.trim() === '') return;
    this.#tail.push(text);
    if (this.#tail.length > TAIL_LINES) this.#tail.shift();
    let parsed: LogLine;
    try {
      const value: unknown = JSON.parse(text);
      parsed = typeof value === 'object' && value !== null ? (value as LogLine) : { msg: text };
    } catch {
      parsed = { msg: text };
    }
    if (this.#history.length < HISTORY_LINES) this.#history.push(parsed);
    for (const waiter of [...this.#waiters]) waiter(parsed);
  }

  get running(): boolean {
    return (
      this.process.exitCode === null && this.process.signalCode === null && this.process.pid !== undefined
    );
  }

  /** The last lines the child wrote, for error messages. */
  tail(lines = 15): string {
    return this.#tail.slice(-lines).join('\n');
  }

  /**
   * Resolves with the first log line `match` accepts (returning a value other than `undefined`).
   * Rejects when `fail` recognizes a fatal line, when the child exits, or after `timeoutMs`.
   */
  waitFor<T>(
    what: string,
    match: (line: LogLine) => T | undefined,
    options: { timeoutMs: number; fail?: (line: LogLine) => string | undefined },
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const finish = (error: Error | undefined, value?: T) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#waiters.delete(waiter);
        if (error !== undefined) reject(error);
        else resolve(value as T);
      };
      const waiter: Waiter = (line) => {
        const value = match(line);
        if (value !== undefined) {
          finish(undefined, value);
          return;
        }
        const reason = options.fail?.(line);
        if (reason !== undefined) finish(new DemoError(`${this.name}: ${reason}`, this));
      };
      const timer = setTimeout(
        () => finish(new DemoError(`${this.name}: no ${what} within ${options.timeoutMs / 1000} s`, this)),
        options.timeoutMs,
      );
      this.#waiters.add(waiter);
      for (const line of this.#history) {
        if (settled) return;
        waiter(line);
      }
      // After the last line of output was read: a child that said what we wait for and then
      // exited has answered.
      void this.#exited.then(() =>
        finish(new DemoError(`${this.name} exited (${this.#exitText()}) while waiting for ${what}`, this)),
      );
    });
  }

  #exitText(): string {
    const { exitCode, signalCode } = this.process;
    return signalCode !== null ? `signal ${signalCode}` : `status ${exitCode ?? 'unknown'}`;
  }

  /** SIGTERM, then SIGKILL after a grace period; resolves once the child is gone. */
  async stop(): Promise<void> {
    if (this.running) {
      this.process.kill('SIGTERM');
      const killer = setTimeout(() => this.process.kill('SIGKILL'), STOP_GRACE_MS);
      await this.#exited;
      clearTimeout(killer);
    }
    await this.#exited;
  }

  /** Resolves when the child has exited by itself. */
  exited(): Promise<void> {
    return this.#exited;
  }
}

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

/** Signals a command's whole process group (it was started detached, as the group's leader). */
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // Already gone.
  }
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', () => resolve());
  });
}

/**
 * Every process the demo started: the long-running children and the short commands alike, so
 * that {@link Children.stopAll} leaves none behind, even when a step was cut short. Once stopping,
 * it starts nothing more: a step still running in the background after an interruption cannot
 * spawn a process that would outlive the demo.
 */
export class Children {
  readonly #children: Child[] = [];
  readonly #commands = new Set<ChildProcess>();
  readonly #logDir: string;
  #stopping = false;

  constructor(logDir: string) {
    this.#logDir = logDir;
  }

  #refuseWhenStopping(name: string): void {
    if (this.#stopping) throw new DemoError(`not starting ${name}: the demo is stopping`);
  }

  start(name: string, command: string, args: readonly string[], options: SpawnOptions = {}): Child {
    this.#refuseWhenStopping(name);
    const child = new Child(name, this.#logDir, command, args, options);
    this.#children.push(child);
    return child;
  }

  /**
   * Runs a command to completion, in a process group of its own so that stopping it also stops
   * what it started (swtpm_setup runs swtpm). On failure the error names the command (not its
   * arguments, which may be long) and carries its standard error.
   */
  run(
    what: string,
    command: string,
    args: readonly string[],
    options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
  ): Promise<RunResult> {
    this.#refuseWhenStopping(what);
    return new Promise((resolve, reject) => {
      const child = spawn(command, args, {
        env: options.env ?? process.env,
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      this.#commands.add(child);
      let stdout = '';
      let stderr = '';
      child.stdout?.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
      });
      child.stderr?.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      const timeoutMs = options.timeoutMs ?? 60_000;
      const timer = setTimeout(() => killGroup(child, 'SIGKILL'), timeoutMs);
      const fail = (detail: string) => reject(new DemoError(`${what} failed: ${detail}`));
      child.once('error', (error: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        this.#commands.delete(child);
        fail(
          error.code === 'ENOENT'
            ? `${command} not found on PATH (npm run bootstrap installs it)`
            : error.message,
        );
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        this.#commands.delete(child);
        if (code === 0) resolve({ stdout, stderr });
        else {
          const how = signal !== null ? `killed by ${signal}` : `exit status ${code}`;
          fail(`${how}${stderr.trim() || stdout.trim() ? `: ${stderr.trim() || stdout.trim()}` : ''}`);
        }
      });
    });
  }

  /** Stops every command and child (children in reverse order of start) and starts nothing more. */
  async stopAll(): Promise<void> {
    this.#stopping = true;
    await Promise.all(
      [...this.#commands].map((command) => {
        killGroup(command, 'SIGTERM');
        return exited(command);
      }),
    );
    for (const child of [...this.#children].reverse()) await child.stop();
  }
}
