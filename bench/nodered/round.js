// bench round: on each tick, one flex-getter message per planned request, per gateway
// (output g goes to gateway g's modbus-flex-getter). The round's state is shared with
// the count node through the flow context; nothing else is kept. In the first round the
// first reply of each gateway is also printed (`sample`), for the bench to check the decoding.
const bench = flow.get("bench");
const plan = context.get("plan");
const round = ++bench.round;
bench.open[round] = {
    t0: global.get("perf").now(), replies: 0, readings: 0, bad: 0,
    overlapped: Object.keys(bench.open).length,  // rounds still waiting for replies when this one starts
};
return plan.map((requests, g) => requests.map((q, i) => ({
    round: round,
    topic: String(g),
    sample: round === 1 && i === 0,
    payload: { unitid: q[0], fc: q[1], address: q[2], quantity: q[3] },
})));
