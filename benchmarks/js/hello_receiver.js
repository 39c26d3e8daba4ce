#!/usr/bin/env node
/*
 * The node-discover twin of benchmarks/hello_receiver.py: one node-discover 1.2.1 node that
 * reports its costs.  stdin line "mark" -> one JSON line {cpu, received, nodes, rss}: this
 * process's CPU seconds (user + system), the hellos it handled (helloReceived events), its
 * node-table size and its resident memory (bytes).  Runs until stdin closes.  Loopback only: binds --port, sends its
 * own hellos to 127.0.0.1:--sink-port.
 */
'use strict';

const readline = require('readline');
const Discover = require('node-discover');

function arg(name, fallback) {
    const i = process.argv.indexOf('--' + name);
    return i >= 0 ? process.argv[i + 1] : fallback;
}

const options = {
    address: '127.0.0.1',
    port: Number(arg('port')),
    unicast: '127.0.0.1:' + arg('sink-port'),
    weight: 1000,
};
if (arg('key')) options.key = arg('key');

let received = 0;
const d = new Discover(options, function (err) {
    if (err) { console.error(String(err)); process.exit(1); }
    console.log(JSON.stringify({ ready: true }));
});
d.on('helloReceived', function () { received += 1; });

readline.createInterface({ input: process.stdin }).on('line', function (line) {
    if (line.trim() === 'mark') {
        const cpu = process.cpuUsage();
        let nodes = 0;
        d.eachNode(function () { nodes += 1; });
        console.log(JSON.stringify({ cpu: (cpu.user + cpu.system) / 1e6, received: received, nodes: nodes,
                                     rss: process.memoryUsage().rss }));
    }
}).on('close', function () { d.stop(); process.exit(0); });
