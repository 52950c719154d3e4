// float32 values, big-endian word order ABCD, as the fleet serves them; nothing stored:
// the values go on to the count node, which only counts them.
const buf = msg.responseBuffer.buffer;
const n = buf.length >> 2;
const values = new Array(n);
let bad = 0;
for (let i = 0; i < n; i++) {
    const v = buf.readFloatBE(4 * i);
    values[i] = v;
    if (!Number.isFinite(v)) bad++;
}
if (msg.sample) {
    console.log("EMMBENCH " + JSON.stringify({
        ev: "sample", gateway: Number(msg.topic), unitid: msg.modbusRequest.unitid,
        address: msg.modbusRequest.address, values: values,
    }));
}
return { round: msg.round, payload: values, bad: bad };
