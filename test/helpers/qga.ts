/**
 * A small client for the QEMU guest agent (qemu-guest-agent in the guest, a virtio-serial port on the
 * host): JSON requests and answers, one per line, over the Unix socket qemu serves. Enough to run a
 * command in the guest and read its exit code and output.
 *
 * @example
 *   const qga = await GuestAgent.connect(socketPath, 300_000);
 *   const { exitCode, stdout } = await qga.exec('systemctl is-active ironroot-agent');
 */
import { connect, type Socket } from 'node:net';

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

interface Answer {
  return?: unknown;
  error?: { class: string; desc: string };
}

/** What guest-exec-status answers (QGA's schema, the fields used here). */
interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class GuestAgent {
  readonly #socket: Socket;
  #buffer = '';
  #lines: string[] = [];
  #waiting: (() => void) | undefined;
  #closed = false;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      // guest-sync-delimited answers after a 0xFF byte; anything before it is stale and dropped.
      const text = chunk.toString('latin1');
      const sentinel = text.lastIndexOf('\xff');
      if (sentinel >= 0) {
        this.#buffer = '';
        this.#lines = [];
      }
      this.#buffer += sentinel >= 0 ? text.slice(sentinel + 1) : text;
      let newline = this.#buffer.indexOf('\n');
      while (newline >= 0) {
        const line = this.#buffer.slice(0, newline).trim();
        this.#buffer = this.#buffer.slice(newline + 1);
        if (line !== '') this.#lines.push(line);
        newline = this.#buffer.indexOf('\n');
      }
      this.#wake();
    });
    socket.on('close', () => {
      this.#closed = true;
      this.#wake();
    });
    socket.on('error', () => undefined);
  }

  #wake(): void {
    const waiting = this.#waiting;
    this.#waiting = undefined;
    waiting?.();
  }

  /**
   * Connects to qemu's socket for the guest agent and waits until the agent in the guest answers a
   * guest-sync-delimited (it starts late in the guest's boot; until then requests go unanswered).
   */
  static async connect(path: string, timeoutMs: number): Promise<GuestAgent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const socket = await new Promise<Socket | undefined>((resolve) => {
        const s = connect(path);
        s.once('connect', () => resolve(s));
        s.once('error', () => resolve(undefined));
      });
      if (socket !== undefined) {
        const agent = new GuestAgent(socket);
        if (await agent.#sync(deadline)) return agent;
        agent.close();
        throw new Error(`the guest agent on ${path} did not answer guest-sync within ${timeoutMs} ms`);
      }
      if (Date.now() > deadline) throw new Error(`could not connect to ${path} within ${timeoutMs} ms`);
      await sleep(200);
    }
  }

  /** Repeats guest-sync-delimited with fresh ids until one comes back; false at `deadline`. */
  async #sync(deadline: number): Promise<boolean> {
    while (Date.now() < deadline && !this.#closed) {
      const id = Math.floor(Math.random() * 2 ** 31);
      // 0xFF first makes the guest agent drop whatever partial request it holds.
      this.#socket.write(
        Buffer.concat([
          Buffer.from([0xff]),
          Buffer.from(`${JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } })}\n`),
        ]),
      );
      const answerBy = Math.min(deadline, Date.now() + 5_000);
      for (;;) {
        const line = await this.#nextLine(answerBy);
        if (line === undefined) break;
        if ((JSON.parse(line) as Answer).return === id) return true;
      }
    }
    return false;
  }

  async #nextLine(deadline: number): Promise<string | undefined> {
    for (;;) {
      const line = this.#lines.shift();
      if (line !== undefined) return line;
      const left = deadline - Date.now();
      if (left <= 0 || this.#closed) return undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiting = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  async #call<T>(execute: string, args: Record<string, unknown>, timeoutMs = 30_000): Promise<T> {
    this.#socket.write(`${JSON.stringify({ execute, arguments: args })}\n`);
    const line = await this.#nextLine(Date.now() + timeoutMs);
    if (line === undefined)
      throw new Error(`the guest agent did not answer ${execute} within ${timeoutMs} ms`);
    const answer = JSON.parse(line) as Answer;
    if (answer.error !== undefined)
      throw new Error(`the guest agent refused ${execute}: ${answer.error.class}: ${answer.error.desc}`);
    return answer.return as T;
  }

  /** Runs `script` with /bin/sh -c in the guest (as root) and waits for it to exit. */
  exec(script: string, timeoutMs = 120_000): Promise<ExecResult> {
    return this.run('/bin/sh', ['-c', script], timeoutMs);
  }

  /** Runs `path` with `args` in the guest (as root, no shell) and waits for it to exit. */
  async run(path: string, args: readonly string[], timeoutMs = 120_000): Promise<ExecResult> {
    const what = [path, ...args].join(' ');
    const { pid } = await this.#call<{ pid: number }>('guest-exec', {
      path,
      arg: args,
      'capture-output': true,
    });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = await this.#call<ExecStatus>('guest-exec-status', { pid });
      if (status.exited) {
        const text = (data?: string) => Buffer.from(data ?? '', 'base64').toString();
        return {
          exitCode: status.exitcode ?? 128 + (status.signal ?? 0),
          stdout: text(status['out-data']),
          stderr: text(status['err-data']),
        };
      }
      if (Date.now() > deadline)
        throw new Error(`"${what}" did not exit in the guest within ${timeoutMs} ms`);
      await sleep(250);
    }
  }

  close(): void {
    this.#socket.destroy();
  }
}
