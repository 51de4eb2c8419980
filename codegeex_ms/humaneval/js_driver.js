'use strict';
// Test driver for one JavaScript sample (copied into the sample directory and run there).
//
// Reads and deletes harness.json (nonce marker, trusted helpers, entry point, test, js-md5 path)
// before any sample code runs. The sample (sample.js) then runs in its own V8 realm (a vm
// context whose global is a null-prototype object): no require (except a js-md5 loaded inside
// that realm), no process, no host console, and Error.prepareStackTrace locked, so it holds no
// reference to any host-realm object. The dataset's tests run in the host realm with the
// prompt's helpers, their own console.assert (which throws), and the entry point bound to a
// proxy: arguments cross as JSON text, results are copied into fresh host-realm plain values.
// Only after the test code returns is the completion marker written.

const fs = require('fs');
const vm = require('vm');

const writeSync = fs.writeSync;
const exit = process.exit.bind(process);
const ArrayIsArray = Array.isArray;
const ObjectKeys = Object.keys;
const defineProperty = Object.defineProperty;
const stringify = JSON.stringify;
const MAX_DEPTH = 200;
const MAX_LENGTH = 1 << 24;

function fail(message) {
  writeSync(2, `${message}\n`);
  exit(1);
}

function describe(e) {
  try {
    return String((e && e.stack) || e);
  } catch (_) {
    return 'an unprintable exception';
  }
}

function copyOut(value, depth) {
  if (depth > MAX_DEPTH) throw new Error('the sample returned a value nested too deeply');
  const t = typeof value;
  if (value === null || t === 'undefined' || t === 'number' || t === 'string' ||
      t === 'boolean' || t === 'bigint') {
    return value;
  }
  if (t !== 'object') throw new Error(`the sample returned a ${t}`);
  if (ArrayIsArray(value)) {
    const n = value.length;
    if (typeof n !== 'number' || !(n >= 0 && n <= MAX_LENGTH)) {
      throw new Error('the sample returned an array with a bad length');
    }
    const out = [];
    for (let i = 0; i < n; i++) out[i] = copyOut(value[i], depth + 1);
    return out;
  }
  const out = {};
  const keys = ObjectKeys(value);
  for (let i = 0; i < keys.length; i++) {
    const key = `${keys[i]}`;
    defineProperty(out, key, {value: copyOut(value[key], depth + 1), enumerable: true,
                              writable: true, configurable: true});
  }
  return out;
}

function main() {
  const spec = JSON.parse(fs.readFileSync('harness.json', 'utf8'));
  fs.unlinkSync('harness.json');
  const sampleSource = fs.readFileSync('sample.js', 'utf8');
  const md5Source = spec.md5 ? fs.readFileSync(spec.md5, 'utf8') : '';

  const context = vm.createContext(Object.create(null));
  const inRealm = (code) => vm.runInContext(code, context, {filename: 'codegeex-harness.js'});
  inRealm(`'use strict';
    Object.defineProperty(Error, 'prepareStackTrace',
                          {value: undefined, writable: false, configurable: false});
    Object.defineProperty(globalThis, 'Error', {value: Error, writable: false,
                                                configurable: false});
    globalThis.console = {log() {}, error() {}, warn() {}, info() {}, debug() {}, assert() {}};
    globalThis.module = {exports: {}};
    globalThis.exports = globalThis.module.exports;`);
  const md5Module = inRealm('({exports: {}})');
  if (md5Source) {
    inRealm(`(function (module, exports) {\n${md5Source}\n})`)(md5Module, md5Module.exports);
  }
  inRealm(`(function (md5) {
    'use strict';
    globalThis.require = function require(name) {
      if (name === 'js-md5') return md5;
      throw new Error('Cannot find module ' + name);
    };
  })`)(md5Module.exports);
  const callInRealm = inRealm(`(function () {
    'use strict';
    const parse = JSON.parse;
    const apply = Reflect.apply;
    return function (fn, args) { return apply(fn, undefined, parse(args)); };
  })()`);

  try {
    vm.runInContext(sampleSource, context, {filename: 'sample.js'});
  } catch (e) {
    fail(`the sample raised while loading: ${describe(e)}`);
  }
  const entry = spec.entry;
  const fn = inRealm(`typeof ${entry} === 'function' ? ${entry} : undefined`);
  if (fn === undefined) fail(`the sample does not define function ${entry}`);

  const proxy = function (...args) {
    return copyOut(callInRealm(fn, stringify(args)), 0);
  };
  const testConsole = {
    log: console.log.bind(console),
    error: console.error.bind(console),
    assert(condition, ...message) {
      if (!condition) throw new Error(`Assertion failed${message.length ? ': ' + message.join(' ') : ''}`);
    },
  };
  const tests = vm.runInThisContext(
      `(function (${entry}, console, require) {\n${spec.helpers}\n${spec.test}\n})`,
      {filename: 'test.js'});
  try {
    tests(proxy, testConsole, require);
  } catch (e) {
    fail(describe(e));
  }
  writeSync(1, `\n${spec.marker}\n`);
  exit(0);
}

main();
