#!/usr/bin/env node
// The end-to-end demo arrives with the workload-identity issue; until then it shows what is built.
process.stdout.write('ironroot demo: nothing to show yet\n');
