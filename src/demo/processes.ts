/**
 * The demo's child processes: each one's output goes to a log file in the demo directory and is
 * kept (the last lines) for error messages; the demo waits on JSON log lines, and every child is
 * stopped by {@link Children.stopAll}, whatever happened before.
 *
 * @module
 */
import { type ChildProcess, execFile, type SpawnOptions, spawn } from 'node:child_process';
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
      const done = () => {
        if (partial !== '') this.#line(partial);
        partial = '';
        this.#log.end();
        resolve();
      };
      this.process.once('exit', done);
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
      const finish = (error: Error | undefined, value?: T) => {
        clearTimeout(timer);
        this.#waiters.delete(waiter);
        this.process.off('exit', onExit);
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
      const onExit = () =>
        finish(new DemoError(`${this.name} exited (${this.#exitText()}) while waiting for ${what}`, this));
      const timer = setTimeout(
        () => finish(new DemoError(`${this.name}: no ${what} within ${options.timeoutMs / 1000} s`, this)),
        options.timeoutMs,
      );
      this.#waiters.add(waiter);
      this.process.once('exit', onExit);
      for (const line of this.#history) {
        if (!this.#waiters.has(waiter)) return;
        waiter(line);
      }
      if (this.#waiters.has(waiter) && !this.running) onExit();
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

/** Every child the demo started, stopped in reverse order of start. */
export class Children {
  readonly #children: Child[] = [];
  readonly #logDir: string;

  constructor(logDir: string) {
    this.#logDir = logDir;
  }

  start(name: string, command: string, args: readonly string[], options: SpawnOptions = {}): Child {
    const child = new Child(name, this.#logDir, command, args, options);
    this.#children.push(child);
    return child;
  }

  /** PIDs of the children still running. */
  pids(): number[] {
    return this.#children.filter((c) => c.running).flatMap((c) => (c.process.pid ? [c.process.pid] : []));
  }

  async stopAll(): Promise<void> {
    for (const child of [...this.#children].reverse()) await child.stop();
  }
}

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a command to completion. On a non-zero exit the error names the command (not its
 * arguments, which may be long) and carries its standard error.
 */
export function runCommand(
  what: string,
  command: string,
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      {
        env: options.env ?? process.env,
        cwd: options.cwd,
        timeout: options.timeoutMs ?? 60_000,
        maxBuffer: 16 << 20,
      },
      (error, stdout, stderr) => {
        if (error) {
          const missing = (error as NodeJS.ErrnoException).code === 'ENOENT';
          const detail = missing
            ? `${command} not found on PATH (npm run bootstrap installs it)`
            : stderr.trim() || stdout.trim() || error.message;
          reject(new DemoError(`${what} failed: ${detail}`));
        } else resolve({ stdout, stderr });
      },
    );
  });
}
