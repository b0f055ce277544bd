// Preloaded (`node --require`) into the processes bench-agent-rss.mjs measures, the agent and the
// bare node alike, so both carry the same few KiB of probe. It answers lines on fd 3 (a socket pair
// the bench opened) with one JSON line of memoryUsage() and the garbage collections so far (count
// and milliseconds, minor and major): `report` as the process is, `gc` after a
// full garbage collection (the heap the process actually retains), `snapshot <file>` after writing
// a heap snapshot there. The GC function comes from V8 at run time so neither process needs
// --expose-gc on its command line.
const { Socket } = require('node:net');
const { constants, PerformanceObserver } = require('node:perf_hooks');
const { createInterface } = require('node:readline');
const { setFlagsFromString, writeHeapSnapshot } = require('node:v8');
const { runInNewContext } = require('node:vm');

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc');

const collections = { minor: 0, minorMs: 0, major: 0, majorMs: 0 };
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    const kind = entry.detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR ? 'minor' : 'major';
    collections[kind]++;
    collections[`${kind}Ms`] += entry.duration;
  }
}).observe({ entryTypes: ['gc'] });

const channel = new Socket({ fd: 3, readable: true, writable: true });
// The probe must not keep a process alive that would otherwise exit.
channel.unref();
createInterface({ input: channel }).on('line', (command) => {
  if (command === 'gc') gc();
  if (command.startsWith('snapshot ')) writeHeapSnapshot(command.slice('snapshot '.length));
  channel.write(`${JSON.stringify({ ...process.memoryUsage(), collections })}\n`);
});
