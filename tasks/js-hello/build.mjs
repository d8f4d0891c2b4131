// Builds task.js into a wasi:http/proxy component: node build.mjs WIT_DIR OUT.wasm
// WIT_DIR holds a world that includes wasi:http/proxy at the version the embedded engine
// (StarlingMonkey) exports; scripts/build-js-task.sh makes it.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const [witPath, out] = process.argv.slice(2);
const { component } = await componentize({ sourcePath: 'task.js', witPath, worldName: 'js-task' });
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes`);
