/**
 * Worker threads for the EK certificate checks (ek-judge.ts). An unauthenticated peer decides what
 * those checks parse and how many signatures they verify; run on the main thread, a burst of such
 * requests would delay the admin API, health checks and every other agent by as long as they take.
 * Here they run beside it: a few workers, a bounded queue in front of them, and a refusal by name
 * (ERR_ATTEST_BUSY) when the queue is full rather than a backlog without end.
 *
 * @module
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { Counter } from 'prom-client';
import type { Logger } from '../log.js';
import type { EkJob, EkJudgement } from './ek-judge.js';
import { AttestationError, type AttestationErrorCode } from './errors.js';

/** The configured EK CAs as DER, handed to each worker once, when it starts. */
export interface EkTrustMaterial {
  readonly roots: readonly Uint8Array[];
  readonly intermediates: readonly Uint8Array[];
}

/** What a worker posts back for job `id`: plain data, since errors do not cross threads as classes. */
export type WorkerAnswer =
  | { readonly id: number; readonly judged: EkJudgement }
  | {
      readonly id: number;
      readonly refused: { readonly code: AttestationErrorCode; readonly message: string };
    }
  | { readonly id: number; readonly failed: string };

/** Jobs that may wait for a worker; one more is refused with ERR_ATTEST_BUSY. */
export const MAX_QUEUED_EK_JOBS = 32;

/**
 * One worker per core beyond the one the main thread needs, at most two: a job is a few
 * milliseconds of CPU, so two workers keep up with any rate attestation_rate_limit lets through, and
 * on a two-core host one worker leaves a core to the thread that serves everyone else.
 */
export function ekWorkerCount(): number {
  return Math.max(1, Math.min(2, availableParallelism() - 1));
}

/**
 * The worker's script. From dist/ it sits beside this module; when this module is the TypeScript
 * source (under the test runner, which builds dist/ first), the worker runs the build of it, since a
 * worker thread loads plain JavaScript only.
 */
function workerScript(): URL {
  return import.meta.url.endsWith('.ts')
    ? new URL('../../../dist/server/nodeattestor/ek-worker.js', import.meta.url)
    : new URL('./ek-worker.js', import.meta.url);
}

interface Waiting {
  readonly job: EkJob;
  readonly resolve: (judged: EkJudgement) => void;
  readonly reject: (error: Error) => void;
}

interface Slot {
  readonly worker: Worker;
  ready: boolean;
  busy: (Waiting & { readonly id: number }) | undefined;
}

export interface EkWorkerPoolOptions {
  readonly trust: EkTrustMaterial;
  readonly logger: Logger;
  /** Jobs answered, by result (ok, or the refusal code). */
  readonly jobs: Counter<'result'>;
  readonly size?: number;
  readonly maxQueued?: number;
  /** The worker's script, when not ek-worker.js: tests substitute one that fails on purpose. */
  readonly script?: URL;
}

function internal(message: string): AttestationError {
  return new AttestationError('ERR_ATTEST_INTERNAL', message);
}

export class EkWorkerPool {
  readonly #o: EkWorkerPoolOptions;
  readonly #slots: Slot[] = [];
  readonly #queue: Waiting[] = [];
  #nextId = 1;
  #stopping = false;

  constructor(options: EkWorkerPoolOptions) {
    this.#o = options;
  }

  /** Starts the workers; resolves once each has read the trust material. */
  async start(): Promise<void> {
    await Promise.all(Array.from({ length: this.#o.size ?? ekWorkerCount() }, () => this.#spawn()));
  }

  /**
   * Judges one EK's certificates in a worker.
   *
   * @throws AttestationError with the judgement's refusal code; ERR_ATTEST_BUSY when
   *   MAX_QUEUED_EK_JOBS jobs are already waiting; ERR_ATTEST_INTERNAL when the worker died on it.
   */
  judge(job: EkJob): Promise<EkJudgement> {
    if (this.#stopping || this.#slots.length === 0)
      return Promise.reject(internal('no EK worker is running; see the server log'));
    const maxQueued = this.#o.maxQueued ?? MAX_QUEUED_EK_JOBS;
    if (this.#queue.length >= maxQueued) {
      this.#o.jobs.inc({ result: 'ERR_ATTEST_BUSY' });
      return Promise.reject(
        new AttestationError(
          'ERR_ATTEST_BUSY',
          `${maxQueued} EK certificate checks are already waiting; retry after a moment`,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ job, resolve, reject });
      this.#dispatch();
    });
  }

  /** Terminates the workers; the jobs they hold and those still waiting are refused. */
  async stop(): Promise<void> {
    this.#stopping = true;
    const stopping = internal('the server is stopping');
    for (const waiting of this.#queue.splice(0)) waiting.reject(stopping);
    for (const slot of this.#slots) {
      slot.busy?.reject(stopping);
      slot.busy = undefined;
    }
    await Promise.all(this.#slots.map((slot) => slot.worker.terminate()));
  }

  #dispatch(): void {
    for (const slot of this.#slots) {
      if (!slot.ready || slot.busy !== undefined) continue;
      const waiting = this.#queue.shift();
      if (waiting === undefined) return;
      const id = this.#nextId++;
      slot.busy = { ...waiting, id };
      slot.worker.ref();
      // Copies, so the transfer detaches only buffers of our own and never gRPC's.
      const ekPublic = Uint8Array.from(waiting.job.ekPublic);
      const certificates = waiting.job.certificates.map((c) => Uint8Array.from(c));
      slot.worker.postMessage({ ...waiting.job, id, ekPublic, certificates }, [
        ekPublic.buffer,
        ...certificates.map((c) => c.buffer),
      ]);
    }
  }

  #spawn(): Promise<void> {
    return new Promise((resolve, reject) => {
      const worker = new Worker(this.#o.script ?? workerScript(), {
        workerData: this.#o.trust,
        name: 'ironroot-ek',
      });
      const slot: Slot = { worker, ready: false, busy: undefined };
      this.#slots.push(slot);
      worker.on('message', (message: WorkerAnswer | { ready: true }) => {
        if ('ready' in message) {
          slot.ready = true;
          resolve();
        } else this.#answered(slot, message);
        // An idle worker must not keep alive a process that is otherwise done (the CLI, a stopped
        // server); one that is starting or holds a job does, like the request it serves.
        if (slot.busy === undefined) worker.unref();
        this.#dispatch();
      });
      worker.on('error', (error) => {
        this.#o.logger.error({ err: error }, 'EK worker failed');
        if (!slot.ready) reject(error);
      });
      worker.on('exit', (code) => {
        if (!slot.ready) reject(new Error(`the EK worker exited with code ${code} before it was ready`));
        this.#exited(slot, code);
      });
    });
  }

  #answered(slot: Slot, answer: WorkerAnswer): void {
    const busy = slot.busy;
    if (busy === undefined || busy.id !== answer.id) return;
    slot.busy = undefined;
    if ('judged' in answer) {
      this.#o.jobs.inc({ result: 'ok' });
      busy.resolve(answer.judged);
    } else if ('refused' in answer) {
      this.#o.jobs.inc({ result: answer.refused.code });
      busy.reject(new AttestationError(answer.refused.code, answer.refused.message));
    } else {
      this.#o.jobs.inc({ result: 'ERR_ATTEST_INTERNAL' });
      this.#o.logger.error({ err: { message: answer.failed } }, 'EK worker failed on a job');
      busy.reject(internal('the server failed while checking the EK certificate; see its log'));
    }
  }

  #exited(slot: Slot, code: number): void {
    this.#slots.splice(this.#slots.indexOf(slot), 1);
    if (this.#stopping) return;
    this.#o.logger.error({ exit_code: code, restart: slot.ready }, 'EK worker exited');
    if (slot.busy !== undefined) {
      this.#o.jobs.inc({ result: 'ERR_ATTEST_INTERNAL' });
      slot.busy.reject(internal('the EK worker stopped while checking this EK certificate; retry'));
    }
    // A worker that never came up would fail again: only one that served is replaced.
    if (slot.ready)
      this.#spawn().catch((error: unknown) =>
        this.#o.logger.error({ err: error }, 'EK worker could not be restarted'),
      );
    else if (this.#slots.length === 0)
      for (const waiting of this.#queue.splice(0))
        waiting.reject(internal('no EK worker is running; see the server log'));
  }
}
