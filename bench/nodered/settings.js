// Node-RED settings for the bench's peer run (bench/nodered.py fills in __FLOW_FILE__).
// Headless: no editor, no admin API, no HTTP nodes, so no HTTP server at all; the flow
// prints its figures on stdout. Nothing is persisted (memory context), nothing phones home.
module.exports = {
    flowFile: __FLOW_FILE__,
    flowFilePretty: false,
    credentialSecret: false,
    uiHost: "127.0.0.1",
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false },
    externalModules: { autoInstall: false, palette: { allowInstall: false }, modules: { allowInstall: false } },
    functionExternalModules: false,
    contextStorage: { default: { module: "memory" } },
    // function nodes run in a vm context without Node's globals: the clock the round times use
    functionGlobalContext: { perf: require("perf_hooks").performance },
    logging: { console: { level: "info", metrics: false, audit: false } },
    editorTheme: { projects: { enabled: false } },
};
