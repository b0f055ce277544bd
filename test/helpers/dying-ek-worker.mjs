// A stand-in for ek-worker.js that comes up like it and then dies on every job, as a worker thread
// that crashes would: EkWorkerPool must refuse the job by name, log it and start another worker.
import { parentPort } from 'node:worker_threads';

parentPort.on('message', () => process.exit(70));
parentPort.postMessage({ ready: true });
