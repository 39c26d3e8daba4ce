#!/usr/bin/env node
/*
 * One end of benchmarks/channel.py, node-discover 1.2.1 edition: the twin of
 * benchmarks/channel_peer.py (same commands, same replies, same message shape).
 *
 *     node benchmarks/js/channel_peer.js --role send|recv --port P --peer-port Q
 *
 * stdin, one command per line, one JSON reply line each:
 *   sender:   latency N RATE   send N messages one at a time, RATE per second
 *             blast RATE SECS  send RATE*SECS messages evenly over SECS (bursts every ~1 ms)
 *   receiver: reset            forget everything received so far
 *             report [lat]     how many messages arrived (and, with "lat", every latency)
 *
 * Messages are {t: <CLOCK_MONOTONIC seconds from process.hrtime>, n: <sequence>}; the
 * receiver subtracts t from its own clock (Python's time.monotonic reads the same one).
 * Nothing is printed per message.  Loopback only: binds 127.0.0.1, unicasts to the peer
 * on 127.0.0.1.  Needs NODE_PATH pointing at a node_modules with node-discover.
 */
'use strict';

const readline = require('readline');
const Discover = require('node-discover');

const CHANNEL = 'bench';
const MAX_SECONDS = 30;
const MAX_MESSAGES = 2000000;

function now() {
    return Number(process.hrtime.bigint()) / 1e9;
}

function cpu() {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
}

function reply(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function parseArgs(argv) {
    const args = {};
    for (let i = 0; i < argv.length; i += 2) args[argv[i]] = argv[i + 1];
    if (!['send', 'recv'].includes(args['--role'])) throw new Error('--role send|recv');
    args.port = Number(args['--port']);
    args.peerPort = Number(args['--peer-port']);
    if (!(args.port > 0 && args.peerPort > 0)) throw new Error('--port and --peer-port are required');
    return args;
}

function bounded(words) {
    let count, rate;
    if (words[0] === 'latency') {
        count = parseInt(words[1], 10);
        rate = Number(words[2]);
    } else {
        rate = Number(words[1]);
        count = Math.floor(rate * Math.min(Number(words[2]), MAX_SECONDS));
    }
    if (!(rate > 0) || count / rate > MAX_SECONDS) throw new Error(`at most ${MAX_SECONDS} s of messages`);
    return [Math.min(count, MAX_MESSAGES), rate];
}

function main() {
    const args = parseArgs(process.argv.slice(2));
    const role = args['--role'];
    const d = new Discover({
        address: '127.0.0.1',
        port: args.port,
        unicast: `127.0.0.1:${args.peerPort}`,
        weight: role === 'recv' ? 1 : 2,
        start: false,
    });

    let count = 0;
    let latencies = [];
    if (role === 'recv') {
        d.join(CHANNEL, (data) => {
            const t = now();
            count++;
            latencies.push(t - data.t);
        });
    }

    function send(words, done) {
        const [total, rate] = bounded(words);
        const start = now();
        const deadline = start + total / rate * 3 + 5;
        let sent = 0;
        const latency = words[0] === 'latency';
        function tick() {
            const t = now();
            if (latency) {
                while (sent < total && now() >= start + sent / rate) {
                    d.send(CHANNEL, {t: now(), n: sent});
                    sent++;
                }
            } else {
                const due = Math.min(total, Math.floor((t - start) * rate) + 1);
                while (sent < due) {
                    d.send(CHANNEL, {t: now(), n: sent});
                    sent++;
                }
            }
            if (sent < total && now() < deadline) {
                const wait = latency ? Math.max(0, (start + sent / rate - now()) * 1000) : 1;
                setTimeout(tick, wait);
            } else {
                done({sent: sent, seconds: now() - start, cpu: cpu()});
            }
        }
        tick();
    }

    // Commands run one after another: a blast must end before the next line is read.
    const queue = [];
    let busy = false;
    function pump() {
        if (busy || queue.length === 0) return;
        const words = queue.shift();
        if (role === 'recv') {
            if (words[0] === 'reset') {
                count = 0;
                latencies = [];
                reply({ok: true});
            } else if (words[0] === 'report') {
                const out = {received: count, cpu: cpu()};
                if (words[1] === 'lat') out.lat = latencies;
                reply(out);
            } else {
                reply({error: `unknown command ${words[0]}`});
            }
            pump();
        } else {
            busy = true;
            send(words, (result) => {
                reply(result);
                busy = false;
                pump();
            });
        }
    }

    d.start((err) => {
        if (err) {
            reply({error: String(err)});
            process.exit(1);
        }
        reply({ready: true, pid: process.pid});
        const rl = readline.createInterface({input: process.stdin, terminal: false});
        rl.on('line', (line) => {
            const words = line.trim().split(/\s+/).filter(Boolean);
            if (words.length) {
                queue.push(words);
                pump();
            }
        });
        rl.on('close', () => {
            d.stop();
            process.exit(0);
        });
    });
    d.broadcast.socket.on('error', (err) => {
        reply({error: String(err)});
        process.exit(1);
    });
    setTimeout(() => process.exit(0), 600000).unref(); // never outlive a lost parent by long
}

main();
