// Times the core's first-execution path under V8, the engine Envoy runs the filter in: the core's
// unit tests built for wasm32-wasip1 (`cargo test -p idempotency-filter-core --release --lib
// --target wasm32-wasip1 --no-run` prints the .wasm), run through Node's WASI, and the process CPU
// time of the ignored test `first_execution_native_time` (core/src/stream/tests/cost.rs) printed.
//   node bench/core_wasm_time.js <tests.wasm> [test name]
// Compare two builds by interleaving several runs of each (bench/README.md, "Group commit").
const { WASI } = require('node:wasi');
const fs = require('fs');

(async () => {
  const test = process.argv[3] || 'first_execution_native_time';
  const wasi = new WASI({
    version: 'preview1',
    args: ['tests', test, '--ignored', '--nocapture', '--test-threads=1'],
    env: {},
    returnOnExit: true,
  });
  const module = await WebAssembly.compile(fs.readFileSync(process.argv[2]));
  const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
  const before = process.cpuUsage();
  wasi.start(instance);
  const used = process.cpuUsage(before);
  console.log(`cpu ${((used.user + used.system) / 1000).toFixed(1)} ms`);
})();
