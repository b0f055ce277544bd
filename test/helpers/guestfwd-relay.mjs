// One guest TCP connection relayed to 127.0.0.1:<port>. qemu's user network starts this once per
// connection the guest opens to a `guestfwd=…-cmd:` address, with the connection as fd 0, 1 and 2
// (so it must never write to stdout or stderr itself). A `guestfwd=…-tcp:` chardev instead opens one
// host connection when qemu starts and carries only the guest's first connection: the agent, which
// opens several, needs this per-connection form.
import { connect, Socket } from 'node:net';

const port = Number(process.argv[2]);
const guest = new Socket({ fd: 0, readable: true, writable: true, allowHalfOpen: true });
const host = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
guest.pipe(host);
host.pipe(guest);
// Whichever side fails or the guest closing ends the relay; the other side is dropped with it.
const done = () => process.exit(0);
guest.on('error', done);
host.on('error', done);
guest.on('close', done);
