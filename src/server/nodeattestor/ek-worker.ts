/**
 * The EK worker: a worker thread that judges EK certificates (ek-judge.ts) for EkWorkerPool. It
 * reads the configured EK CAs once, from workerData, then answers one job per message with plain
 * data: the judgement, or the refusal's code and message.
 *
 * @module
 */
import { X509Certificate } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { type EkJob, type EkTrust, judgeEkCertificates } from './ek-judge.js';
import type { EkTrustMaterial, WorkerAnswer } from './ek-pool.js';
import { AttestationError } from './errors.js';

const port = parentPort;
if (port === null) throw new Error('ek-worker.js runs as a worker thread of ironroot-server');
const material = workerData as EkTrustMaterial;
const trust: EkTrust = {
  roots: material.roots.map((der) => new X509Certificate(der)),
  intermediates: material.intermediates.map((der) => new X509Certificate(der)),
};

port.on('message', (job: EkJob & { readonly id: number }) => {
  let answer: WorkerAnswer;
  try {
    answer = { id: job.id, judged: judgeEkCertificates(job, trust) };
  } catch (error) {
    answer =
      error instanceof AttestationError
        ? { id: job.id, refused: { code: error.code, message: error.message } }
        : { id: job.id, failed: error instanceof Error ? (error.stack ?? error.message) : String(error) };
  }
  port.postMessage(answer);
});
port.postMessage({ ready: true });
