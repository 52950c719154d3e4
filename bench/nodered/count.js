// replies per round; when the round's last reply is decoded, its time (first request sent
// -> last reply decoded) and counts go to stdout as one JSON line for bench/nodered.py.
const bench = flow.get("bench");
const r = bench.open[msg.round];
if (r === undefined) {
    console.log("EMMBENCH " + JSON.stringify({ ev: "error", source: "count", message: "reply for round " + msg.round + ", which is not open" }));
    return null;
}
r.replies += 1;
r.readings += msg.payload.length;
r.bad += msg.bad;
if (r.replies === __REPLIES_PER_ROUND__) {
    const ms = global.get("perf").now() - r.t0;
    delete bench.open[msg.round];
    console.log("EMMBENCH " + JSON.stringify({
        ev: "round", round: msg.round, ms: ms, replies: r.replies, readings: r.readings, bad: r.bad,
        overlapped: r.overlapped,
    }));
}
return null;
