// any error a node of the flow reports (catch node): one JSON line, the bench stops on it.
const e = msg.error || {};
console.log("EMMBENCH " + JSON.stringify({
    ev: "error", source: (e.source && (e.source.name || e.source.type)) || "?", message: String(e.message || e),
    round: msg.round === undefined ? null : msg.round,
}));
return null;
