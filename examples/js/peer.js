#!/usr/bin/env node
/*
 * A small node-discover peer: the JavaScript twin of examples/node.py, for mixed
 * Python / Node.js clusters (examples/mixed_cluster.py, tests/test_interop.py).
 *
 * Install node-discover once (./scripts/test does it), then run from the repository:
 *
 *     npm install --prefix .cache/node --no-audit --no-fund --save-exact node-discover@1.2.1
 *     node examples/js/peer.js --port 44001 --unicast 127.0.0.1:44001,127.0.0.1:44002 --weight 4
 *
 * node-discover is looked up with require('node-discover') first (so NODE_PATH=/some/node_modules
 * or a normal node_modules works), then in <repo>/.cache/node/node_modules (found from __dirname).
 *
 * ALL TIMES ON THE COMMAND LINE ARE SECONDS, as in examples/node.py ("0.5"); a value
 * ending in "ms" is milliseconds ("500ms").  They are converted to node-discover's
 * milliseconds.  The default destination is loopback broadcast 127.255.255.255, never
 * the LAN: pass --unicast for anything else.
 *
 * stdin: every line is sent on --channel as {"text": line} (node-discover drops falsy
 * data, so an object is always used); the line "state" prints this node's view instead;
 * "!nodata" sends a message without data (to show what a peer does with one).  The
 * peer stops when stdin closes, on SIGTERM/SIGINT, or after --lifetime seconds, and
 * exits 0.  --json prints one JSON object per event with t = seconds since the epoch
 * (sub-millisecond, like Python's time.time()), the same events and fields as examples/node.py:
 * started, added, removed, master, promotion, demotion, message, sent, state, stopped, error.
 */
'use strict';

const os = require('os');
const path = require('path');
const readline = require('readline');

const LOOPBACK_BROADCAST = '127.255.255.255';
const LOCAL_INSTALL = path.join(__dirname, '..', '..', '.cache', 'node', 'node_modules', 'node-discover');
const INSTALL_HINT =
    'install it with: npm install --prefix .cache/node --no-audit --no-fund --save-exact node-discover@1.2.1 ' +
    '(from the repository root; ./scripts/test does this), or put it on NODE_PATH';

const USAGE = `usage: node examples/js/peer.js [options]

A node-discover peer printing what it sees (the twin of examples/node.py).

options (times in SECONDS, or with an "ms" suffix in milliseconds):
  --port N              UDP port to bind and, for broadcast, to send to (default 12345)
  --broadcast ADDR      broadcast address (default ${LOOPBACK_BROADCAST}: loopback only)
  --unicast LIST        comma-separated host[:port] list instead of broadcast
  --weight W            election weight, higher wins (default: node-discover's, older wins)
  --hello-interval T    time between hellos (default 1)
  --check-interval T    election and timeout check period (default 2)
  --node-timeout T      a silent node is dropped after this (default 2; >= check interval)
  --master-timeout T    the same for a master (default node timeout; >= node timeout)
  --key KEY             node-discover's legacy cipher (pydiscover: encryption="node-discover")
  --encryption MODE     only "node-discover" (the one cipher node-discover has); needs --key
  --advertise JSON      a JSON value advertised with every hello
  --channel NAME        channel joined, stdin lines are sent on it (default chat)
  --json                one JSON object per event, with t in seconds since the epoch
  --lifetime T          stop (cleanly) after this long
  -h, --help            this help

stdin: each line is sent on the channel as {"text": line}; "state" prints the view;
"!nodata" sends a message without data.  Stops on EOF, SIGTERM or SIGINT (exit 0).`;

function fail(message, code) {
    process.stderr.write(`peer.js: ${message}\n`);
    process.exit(code === undefined ? 2 : code);
}

function seconds(name, text) {
    const match = /^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(ms|s)?\s*$/i.exec(text || '');
    if (!match) fail(`${name}: expected seconds (e.g. 0.5) or milliseconds with "ms" (e.g. 500ms), got ${text}`);
    const value = parseFloat(match[1]);
    const ms = (match[2] || 's').toLowerCase() === 'ms' ? value : value * 1000;
    if (!(ms > 0)) fail(`${name}: must be positive`);
    return Math.round(ms);
}

function parseArgs(argv) {
    const flags = new Set(['--json', '-h', '--help']);
    const valued = new Set([
        '--port', '--broadcast', '--unicast', '--weight', '--hello-interval', '--check-interval',
        '--node-timeout', '--master-timeout', '--key', '--encryption', '--advertise', '--channel', '--lifetime',
    ]);
    const args = {};
    for (let i = 0; i < argv.length; i++) {
        let name = argv[i];
        let value;
        const eq = name.indexOf('=');
        if (name.startsWith('--') && eq > 0) {
            value = name.slice(eq + 1);
            name = name.slice(0, eq);
        }
        if (flags.has(name)) {
            args[name] = true;
        } else if (valued.has(name)) {
            if (value === undefined) {
                if (i + 1 >= argv.length) fail(`${name} needs a value`);
                value = argv[++i];
            }
            args[name] = value;
        } else {
            fail(`unknown argument ${name}\n\n${USAGE}`);
        }
    }
    return args;
}

function buildOptions(args) {
    const opts = {port: 12345};
    if (args['--port'] !== undefined) {
        opts.port = Number(args['--port']);
        if (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535) fail('--port: 1..65535');
    }
    if (args['--unicast']) {
        opts.unicast = args['--unicast'];
    } else {
        opts.broadcast = args['--broadcast'] || LOOPBACK_BROADCAST;
    }
    if (args['--weight'] !== undefined) {
        opts.weight = Number(args['--weight']);
        // node-discover replaces a weight of 0 (falsy) by its default; refuse it rather than surprise.
        if (!Number.isFinite(opts.weight) || opts.weight === 0) fail('--weight: a finite, non-zero number');
    }
    for (const [flag, key] of [
        ['--hello-interval', 'helloInterval'],
        ['--check-interval', 'checkInterval'],
        ['--node-timeout', 'nodeTimeout'],
        ['--master-timeout', 'masterTimeout'],
    ]) {
        if (args[flag] !== undefined) opts[key] = seconds(flag, args[flag]);
    }
    if (args['--encryption'] !== undefined) {
        if (args['--encryption'] !== 'node-discover') {
            fail(`--encryption: node-discover has only its legacy cipher ("node-discover"), not ${args['--encryption']}`);
        }
        if (!args['--key']) fail('--encryption needs --key');
    }
    if (args['--key']) {
        // Node.js 22 removed crypto.createCipher: node-discover would then fail to encode
        // every packet *silently* (it swallows the error) and be invisible.  Say so instead.
        if (typeof require('crypto').createCipher !== 'function') {
            fail(`this Node.js (${process.version}) has no crypto.createCipher, so node-discover cannot use --key`);
        }
        opts.key = args['--key'];
    }
    if (args['--advertise'] !== undefined) {
        try {
            opts.advertisement = JSON.parse(args['--advertise']);
        } catch (e) {
            fail(`--advertise: not JSON: ${e.message}`);
        }
    }
    return opts;
}

function loadDiscover() {
    try {
        return require('node-discover');
    } catch (e) {
        if (e.code !== 'MODULE_NOT_FOUND') throw e;
    }
    try {
        return require(LOCAL_INSTALL);
    } catch (e) {
        if (e.code !== 'MODULE_NOT_FOUND') throw e;
        return fail(`node-discover not found; ${INSTALL_HINT}`);
    }
}

function makePrinter(asJson) {
    process.stdout.on('error', () => {}); // a reader that went away (EPIPE) must not kill the peer
    return function out(event, fields) {
        // Sub-millisecond, like Python's time.time(): a reader compares it with its own clock.
        const now = performance.timeOrigin + performance.now();
        let line;
        if (asJson) {
            line = JSON.stringify(Object.assign({event: event, t: now / 1000}, fields || {}));
        } else {
            const d = new Date(now);
            const stamp = d.toTimeString().slice(0, 8) + '.' + String(Math.floor(now % 1000)).padStart(3, '0');
            line = `${stamp} ${event.padEnd(9)} ` + Object.entries(fields || {})
                .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ');
        }
        process.stdout.write(line + '\n'); // synchronous for pipes and files on Linux
    };
}

/* A node as examples/node.py prints it (node-discover's objects use camelCase, no id on `me`). */
function describe(node, id) {
    return {
        id: id || node.id,
        weight: node.weight,
        is_master: !!node.isMaster,
        address: node.address,
        port: node.port,
        hostname: node.hostName,
        advertisement: node.advertisement === undefined ? null : node.advertisement,
    };
}

function main() {
    const args = parseArgs(process.argv.slice(2));
    if (args['-h'] || args['--help']) {
        process.stdout.write(USAGE + '\n');
        return;
    }
    const opts = buildOptions(args);
    const channel = args['--channel'] || 'chat';
    const lifetime = args['--lifetime'] !== undefined ? seconds('--lifetime', args['--lifetime']) : null;
    const Discover = loadDiscover();
    const out = makePrinter(!!args['--json']);

    opts.start = false; // listeners first, so nothing is missed
    const d = new Discover(opts);
    const myId = d.broadcast.instanceUuid;
    let stopping = false;

    function stop(reason) {
        if (stopping) return;
        stopping = true;
        d.stop(); // node-discover sends no goodbye: peers drop this node after their timeout
        out('stopped', {reason: reason});
        process.exit(0);
    }

    d.on('started', () => out('started', Object.assign(
        {pid: process.pid}, describe(Object.assign({}, d.me, {port: opts.port, hostName: d.broadcast.hostName}), myId),
    )));
    d.on('added', (node) => out('added', describe(node)));
    d.on('removed', (node) => out('removed', describe(node)));
    d.on('master', (node) => out('master', describe(node)));
    d.on('promotion', (me) => out('promotion', describe(Object.assign({}, me, {port: opts.port}), myId)));
    d.on('demotion', (me) => out('demotion', describe(Object.assign({}, me, {port: opts.port}), myId)));
    d.on('error', (err) => out('error', {error: String(err && err.stack || err)}));
    d.join(channel, (data, obj) => out('message', {channel: channel, data: data, from: obj.iid}));

    d.start((err) => {
        if (err) {
            out('error', {error: String(err)});
            process.exit(1);
        }
    });
    // A bind failure is emitted on the socket, which node-discover does not listen to.
    d.broadcast.socket.on('error', (err) => {
        out('error', {error: String(err)});
        process.exit(1);
    });

    const rl = readline.createInterface({input: process.stdin, terminal: false});
    rl.on('line', (raw) => {
        const line = raw.trim();
        if (stopping || !line) return;
        if (line === 'state') {
            out('state', {id: myId, nodes: Object.keys(d.nodes).sort(), is_master: !!d.me.isMaster});
        } else if (line === '!nodata') {
            out('sent', {channel: channel, data: null, ok: d.send(channel)});
        } else {
            const data = {text: line};
            out('sent', {channel: channel, data: data, ok: d.send(channel, data)});
        }
    });
    rl.on('close', () => stop('eof'));
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    if (lifetime !== null) setTimeout(() => stop('lifetime'), lifetime).unref();
}

main();
